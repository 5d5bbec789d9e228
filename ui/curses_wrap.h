/* curses_wrap.h: the one place ui/ includes curses, with the wide-character API on (UTF-8 text,
 * cchar_t). Only ui/ sees it; the engine never includes curses (make lint). */
#ifndef TUNA_UI_CURSES_WRAP_H
#define TUNA_UI_CURSES_WRAP_H

#ifndef NCURSES_WIDECHAR
#define NCURSES_WIDECHAR 1
#endif
#include <ncursesw/curses.h>

#endif
