package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestDocumented keeps docs/configuration.md and the example config in step
// with the Config struct: every setting must appear in both.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../deploy/herald.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	walk(reflect.ValueOf(&cfg).Elem(), "", func(path string, _ reflect.Value) {
		if !strings.Contains(string(doc), "`"+path+"`") {
			t.Errorf("docs/configuration.md does not document `%s`", path)
		}
		if !strings.Contains(string(doc), EnvName(path)) {
			t.Errorf("docs/configuration.md does not name %s", EnvName(path))
		}
		leaf := path[strings.LastIndex(path, ".")+1:]
		if !strings.Contains(string(example), leaf+":") {
			t.Errorf("deploy/herald.example.yaml lacks %s", path)
		}
	})
	for _, d := range flagDefs() {
		if !strings.Contains(string(doc), "-"+d.name) {
			t.Errorf("docs/configuration.md does not mention flag -%s", d.name)
		}
	}
}
