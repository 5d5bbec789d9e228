"""Renders chat templates with transformers' own Jinja renderer (the one apply_chat_template
uses) for tests/test_jinja.c: tests/fixtures/jinja/NAME.jinja (the template) and cases.json
(template, context, expected text or error). Models' templates come from ../shared
(tokenizer_config.json chat_template, the SmolLM2 GGUF's tokenizer.chat_template); synthetic
ones exercise the interpreter's features.

usage: python tests/gen_jinja_fixtures.py tests/fixtures/jinja
"""
import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")

MODELS = {
    # name: (source, license note)
    "llama3": ("tokenizers/llama3/tokenizer_config.json", "Meta Llama 3 Community License (template text from Meta-Llama-3-8B-Instruct's tokenizer_config.json)"),
    "qwen3": ("tokenizers/qwen3/tokenizer_config.json", "Apache-2.0 (Qwen3's tokenizer_config.json)"),
    "smollm2": ("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0 (SmolLM2-135M-Instruct, GGUF tokenizer.chat_template)"),
}

# Synthetic templates: features real templates use (written for these tests).
SYNTH = {
    "llama2_style": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "features": """{#- a comment -#}
{%- set ns = namespace(count=0, seen=[]) %}
{%- macro tag(name, body='x') -%}
<{{ name }}>{{ body }}</{{ name }}>
{%- endmacro %}
{%- for m in messages if m.role != 'tool' %}
  {%- set ns.count = ns.count + 1 %}
  {{- loop.index }}/{{ loop.length }}{{ '*' if loop.first else '' }}{{ '$' if loop.last }}:{{ m.role | upper }}={{ m.content | trim | replace('a', 'A') }}
  {%- if m.content | length > 10 %} long{% elif m.content is string %} short{% else %} ?{% endif %}
{% endfor %}
{{- tag('n', ns.count) }}{{ tag('e') }}
{{ messages | map(attribute='role') | join(',') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}
{{ (messages | first).role }} {{ (messages | last).content[:3] }} {{ messages[-1].content[::-1] }}
{{ {'k': [1, 2.5, none, true, 'q"'], 'u': 'é'} | tojson }} {{ [1, 'a'] }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }}
{{ 'x' ~ 1 ~ none }} {{ 'abc' in 'xabcx' }} {{ 3 not in [1, 2] }} {{ undefined_var is defined }} {{ undefined_var | default('dflt') }}
{%- for k, v in {'a': 1, 'b': 2}.items() %} {{ k }}={{ v }}{% endfor %}
{%- for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %} i{{ i }}{% endfor %}
{%- for i in [] %}never{% else %} empty{% endfor %}
{{ 'a,b,,c'.split(',') }} {{ '  pad  '.lstrip() }}| {{ 'Hello'.startswith('He') }} {{ 'x.y'.endswith(('z', 'y')) }}
{%- set block %}captured {{ 1 + 1 }}{% endset %} {{ block }}
{%- if add_generation_prompt %}
<gen>
{%- endif %}
""",
    "whitespace": "A\n  {% if true %}\n    B\n  {% endif %}\n  {%+ if true %}C{% endif %}\n{{- ' D' -}}\n   E {# c #}\n  F\n{%- for x in [1,2] -%}\n  {{ x }}\n{%- endfor %}\n",
}

# Templates that must fail: (name, template, context).
ERRORS = [
    ("raise", "{{ raise_exception('bad role') }}", {}),
    ("unclosed_if", "{% if true %}x", {}),
    ("unclosed_var", "{{ x", {}),
    ("bad_filter", "{{ 'a' | nosuchfilter }}", {}),
    ("attr_of_undefined", "{{ nothing.role }}", {}),
    ("bad_add", "{{ 'a' + 1 }}", {}),
    ("div_zero", "{{ 1 // 0 }}", {}),
    ("unknown_tag", "{% frobnicate %}", {}),
    ("bad_expr", "{{ 1 + }}", {}),
    ("endfor_stray", "{% endfor %}", {}),
]

CONVS = {
    "user": [{"role": "user", "content": "Hi!"}],
    "system_user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    "multi": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "system_multi_reply": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red."},
    ],
    "special": [
        {"role": "user", "content": "  Quotes \"x\" 'y' \\ {{ not_a_tag }} {% raw %} <|im_end|> [INST] é 日本 🙂\n\ttab  "},
        {"role": "assistant", "content": "\nOK: a<b>c & d\n"},
    ],
    "think": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>\nbecause\n</think>\n\nBecause."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "<think>\nyes\n</think>\n\nYes."},
    ],
    "bad_order": [{"role": "assistant", "content": "I speak first."}],
}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CONV = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
    {"role": "tool", "content": "18 C"},
    {"role": "tool", "content": "20 C"},
]


def read_model_template(rel):
    path = os.path.join(SHARED, rel)
    if path.endswith(".gguf"):
        from gguf import GGUFReader

        r = GGUFReader(path)
        f = r.fields["tokenizer.chat_template"]
        return bytes(f.parts[f.data[0]]).decode("utf-8"), None, None
    cfg = json.load(open(path))
    def tok(v):
        return v.get("content") if isinstance(v, dict) else v
    return cfg["chat_template"], tok(cfg.get("bos_token")), tok(cfg.get("eos_token"))


def render(template, ctx):
    kw = {k: v for k, v in ctx.items() if k not in ("messages", "add_generation_prompt")}
    out, _ = render_jinja_template(
        conversations=[ctx["messages"]], chat_template=template,
        add_generation_prompt=ctx.get("add_generation_prompt", False), **kw)
    return out[0]


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    templates = {}
    notes = []
    for name, (rel, lic) in MODELS.items():
        t, bos, eos = read_model_template(rel)
        if name == "smollm2":
            bos, eos = "<|im_start|>", "<|im_end|>"
        templates[name] = (t, bos or "", eos or "")
        notes.append(f"- {name}.jinja: from ../shared/{rel}; {lic}")
    for name, t in SYNTH.items():
        templates[name] = (t, "<s>", "</s>")
        notes.append(f"- {name}.jinja: synthetic, written for these tests")
    cases = []
    for name, (t, bos, eos) in templates.items():
        with open(os.path.join(outdir, name + ".jinja"), "w") as f:
            f.write(t)
        for cname, msgs in CONVS.items():
            for gen in (False, True):
                ctx = {"messages": msgs, "add_generation_prompt": gen, "bos_token": bos, "eos_token": eos}
                case = {"template": name, "case": f"{cname}/gen={int(gen)}", "context": ctx}
                try:
                    case["expected"] = render(t, ctx)
                except Exception as e:  # noqa: BLE001 - the error is the expectation
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
        if name == "qwen3":  # tools, tool calls and tool results
            for gen in (False, True):
                ctx = {"messages": TOOL_CONV, "add_generation_prompt": gen, "bos_token": bos,
                       "eos_token": eos, "tools": TOOLS}
                case = {"template": name, "case": f"tools/gen={int(gen)}", "context": ctx}
                case["expected"] = render(t, ctx)
                cases.append(case)
            ctx = {"messages": CONVS["multi"], "add_generation_prompt": True, "bos_token": bos,
                   "eos_token": eos, "enable_thinking": False}
            cases.append({"template": name, "case": "no_thinking", "context": ctx, "expected": render(t, ctx)})
    for name, t, ctx in ERRORS:
        try:
            render(t, dict(ctx, messages=[]))
            raise SystemExit(f"error case {name} rendered without error")
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001
            cases.append({"template_text": t, "case": "error/" + name, "context": dict(ctx, messages=[]),
                          "error": f"{type(e).__name__}: {e}"})
    with open(os.path.join(outdir, "cases.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(outdir, "README.md"), "w") as f:
        f.write("# tests/fixtures/jinja\n\nMade by `tests/gen_jinja_fixtures.py` (transformers' "
                "render_jinja_template, as apply_chat_template renders).\n`cases.json`: template, "
                "context, expected text (or the Python error). Templates and their licenses:\n\n")
        f.write("\n".join(notes) + "\n")
    print(f"{len(cases)} cases, {len(templates)} templates -> {outdir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/jinja")
