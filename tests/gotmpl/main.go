// gotmpl renders a Modelfile's TEMPLATE with Go's text/template as Ollama does, for
// tests/test_modelfile.c: gotmpl MODELFILE CONVERSATIONS.json prints a JSON array with one
// rendered string per conversation. CONVERSATIONS.json is an array of conversations, each an
// array of {"role","content"} (roles system, user, assistant, tool).
// As Ollama: the Modelfile's SYSTEM is put first when the conversation has no system message,
// consecutive messages of one role (but tool) are joined with "\n\n", .System is every system
// message joined with "\n\n", missing keys render as zero values.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// value reads the value after "NAME " up to the end of a """ or " quoted string, or the line.
func value(mf, name string) (string, bool) {
	i := strings.Index(mf, "\n"+name+" ")
	if i < 0 {
		return "", false
	}
	s := mf[i+len(name)+2:]
	if strings.HasPrefix(s, `"""`) {
		j := strings.Index(s[3:], `"""`)
		if j < 0 {
			return "", false
		}
		return s[3 : 3+j], true
	}
	if k := strings.Index(s, "\n"); k >= 0 {
		s = s[:k]
	}
	return strings.Trim(s, `"`), true
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gotmpl MODELFILE CONVERSATIONS.json")
		os.Exit(2)
	}
	mfb, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mf := "\n" + string(mfb)
	src, ok := value(mf, "TEMPLATE")
	if !ok {
		fmt.Fprintln(os.Stderr, "gotmpl: no TEMPLATE in", os.Args[1])
		os.Exit(1)
	}
	sys, _ := value(mf, "SYSTEM")
	tmpl, err := template.New("").Option("missingkey=zero").Parse(src)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotmpl:", err)
		os.Exit(1)
	}
	cb, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var convs [][]Message
	if err := json.Unmarshal(cb, &convs); err != nil {
		fmt.Fprintln(os.Stderr, "gotmpl:", err)
		os.Exit(1)
	}
	var out []string
	for _, msgs := range convs {
		if sys != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]Message{{Role: "system", Content: sys}}, msgs...)
		}
		var system []string
		var coll []*Message
		for i := range msgs {
			if msgs[i].Role == "system" {
				system = append(system, msgs[i].Content)
			}
			if n := len(coll); n > 0 && coll[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
				coll[n-1].Content += "\n\n" + msgs[i].Content
			} else {
				coll = append(coll, &msgs[i])
			}
		}
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System":   strings.Join(system, "\n\n"),
			"Messages": coll,
			"Response": "",
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "gotmpl:", err)
			os.Exit(1)
		}
		out = append(out, b.String())
	}
	js, _ := json.Marshal(out)
	fmt.Println(string(js))
}
