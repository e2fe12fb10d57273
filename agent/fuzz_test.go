package agent

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseConfig: any input gives a config or a *ConfigError whose every
// line names a file, a line and a field; never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add(DefaultConfigYAML())
	f.Add([]byte(resticRule))
	f.Add([]byte("rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup: {paths: [\"/**\"]}\n"))
	f.Add([]byte("rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    stall: 3s\n"))
	f.Add([]byte("rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    stall: 10ms\n"))
	f.Add([]byte("rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    on_unkillable: force_unmount\n    unmount: [/mnt/*]\n"))
	f.Add([]byte("mode: [\n"))
	f.Add([]byte("rules: [{name: x, match: {args: ['[']}, timeout: -1s, kill: {signal: 9}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err == nil {
			if len(cfg.Rules) == 0 {
				t.Fatal("a valid config with no rules")
			}
			for _, r := range cfg.Rules {
				if r.Timeout <= 0 || r.Name == "" || r.Stall < 0 || (r.Stall > 0 && r.Stall < MinStall) ||
					(r.OnUnkillable == ForceUnmount) != (len(r.Unmount) > 0) {
					t.Fatalf("invalid rule accepted: %+v", r)
				}
				for _, g := range r.Cleanup.Paths {
					if checkPathGlob(g) != "" {
						t.Fatalf("refused glob accepted: %q", g)
					}
				}
			}
			return
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || len(ce.Problems) == 0 {
			t.Fatalf("error is not a ConfigError with problems: %v", err)
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(line, "fuzz.yaml:") {
				t.Fatalf("problem line without file: %q", line)
			}
		}
	})
}
