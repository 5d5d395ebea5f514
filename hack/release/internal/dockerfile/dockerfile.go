// Package dockerfile reads the subset of the Dockerfile syntax our Dockerfiles use (FROM, ARG, WORKDIR,
// COPY, RUN, USER; continuation lines, comments, $VAR and ${VAR}) and the .dockerignore rules of a build
// context, so that the image builds can be replayed and checked on a machine without a Docker engine.
package dockerfile

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Instruction is one Dockerfile instruction.
type Instruction struct {
	// Cmd is the instruction keyword in upper case (COPY, RUN...).
	Cmd string
	// Flags are the --name=value flags of COPY and ADD.
	Flags map[string]string
	// Args is the rest of the line: split into words for COPY, FROM and ARG, one element for RUN.
	Args []string
	// Line is where the instruction starts (1-based).
	Line int
}

// Stage is a FROM and the instructions after it.
type Stage struct {
	Name  string
	Base  string
	Line  int
	Instr []Instruction
}

// Dockerfile is a parsed Dockerfile: the ARGs declared before the first FROM and the stages.
type Dockerfile struct {
	GlobalArgs []Instruction
	Stages     []Stage
}

// ParseFile parses the Dockerfile at p.
func ParseFile(p string) (*Dockerfile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	d, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return d, nil
}

// Parse parses a Dockerfile.
func Parse(r io.Reader) (*Dockerfile, error) {
	d := &Dockerfile{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var (
		buf   strings.Builder
		start int
		n     int
	)
	flush := func() error {
		text := strings.TrimSpace(buf.String())
		buf.Reset()
		if text == "" {
			return nil
		}
		return d.add(text, start)
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments, also between continuation lines
		}
		if buf.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = n
		}
		if strings.HasSuffix(trimmed, "\\") {
			buf.WriteString(strings.TrimSuffix(trimmed, "\\"))
			buf.WriteString(" ")
			continue
		}
		buf.WriteString(trimmed)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("no FROM instruction")
	}
	return d, nil
}

func (d *Dockerfile) add(text string, line int) error {
	cmd, rest, _ := strings.Cut(text, " ")
	in := Instruction{Cmd: strings.ToUpper(cmd), Line: line, Flags: map[string]string{}}
	rest = strings.TrimSpace(rest)
	switch in.Cmd {
	case "RUN":
		for strings.HasPrefix(rest, "--") {
			flag, after, _ := strings.Cut(rest, " ")
			k, v, _ := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
			in.Flags[k] = v
			rest = strings.TrimSpace(after)
		}
		in.Args = []string{rest}
	case "ENTRYPOINT", "CMD", "LABEL", "ENV", "EXPOSE", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "VOLUME", "ONBUILD", "MAINTAINER":
		in.Args = []string{rest}
	default:
		if strings.HasPrefix(rest, "[") {
			return fmt.Errorf("line %d: the JSON form of %s is not supported by hack/release", line, in.Cmd)
		}
		words := strings.Fields(rest)
		for len(words) > 0 && strings.HasPrefix(words[0], "--") {
			k, v, _ := strings.Cut(strings.TrimPrefix(words[0], "--"), "=")
			in.Flags[k] = v
			words = words[1:]
		}
		in.Args = words
	}
	switch {
	case in.Cmd == "FROM":
		s := Stage{Line: line}
		if len(in.Args) == 0 {
			return fmt.Errorf("line %d: FROM without an image", line)
		}
		s.Base = in.Args[0]
		if len(in.Args) == 3 && strings.EqualFold(in.Args[1], "AS") {
			s.Name = in.Args[2]
		}
		d.Stages = append(d.Stages, s)
	case len(d.Stages) == 0:
		if in.Cmd != "ARG" {
			return fmt.Errorf("line %d: %s before the first FROM", line, in.Cmd)
		}
		d.GlobalArgs = append(d.GlobalArgs, in)
	default:
		st := &d.Stages[len(d.Stages)-1]
		st.Instr = append(st.Instr, in)
	}
	return nil
}

// Stage returns the stage named name (or with that index), nil if there is none.
func (d *Dockerfile) Stage(name string) *Stage {
	for i := range d.Stages {
		if d.Stages[i].Name == name || fmt.Sprint(i) == name {
			return &d.Stages[i]
		}
	}
	return nil
}

// Args returns the values of the ARGs a stage declares: their defaults, overridden by buildArgs.
func (s *Stage) Args(buildArgs map[string]string) map[string]string {
	vals := map[string]string{}
	for _, in := range s.Instr {
		if in.Cmd != "ARG" {
			continue
		}
		for _, a := range in.Args {
			k, v, _ := strings.Cut(a, "=")
			vals[k] = v
			if o, ok := buildArgs[k]; ok {
				vals[k] = o
			}
		}
	}
	return vals
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// Expand replaces $VAR and ${VAR} by their values; unknown variables expand to "".
func Expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.Trim(m, "${}")
		return vars[name]
	})
}

// Words splits a shell command into words the way sh does for the simple commands Dockerfiles use:
// single and double quotes, backslash escapes. It refuses what it cannot replay faithfully.
func Words(cmd string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool
		quote rune
	)
	runes := []rune(cmd)
	for i := 0; i < len(runes); i++ {
		c := runes[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case quote == '"':
			switch {
			case c == '"':
				quote = 0
			case c == '\\' && i+1 < len(runes) && strings.ContainsRune(`"\$`, runes[i+1]):
				i++
				cur.WriteRune(runes[i])
			default:
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == '\\' && i+1 < len(runes):
			i++
			cur.WriteRune(runes[i])
			in = true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case strings.ContainsRune(";&|<>`()", c):
			return nil, fmt.Errorf("%q: only a single simple command can be replayed, found %q", cmd, c)
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("%q: unterminated quote", cmd)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}

// Ignore holds the .dockerignore rules of a build context.
type Ignore struct {
	rules []rule
}

type rule struct {
	pattern string
	exclude bool // false for a "!" exception
}

// ReadIgnore reads context/.dockerignore; a missing file ignores nothing.
func ReadIgnore(context string) (*Ignore, error) {
	data, err := os.ReadFile(filepath.Join(context, ".dockerignore"))
	if os.IsNotExist(err) {
		return &Ignore{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseIgnore(string(data)), nil
}

// ParseIgnore parses .dockerignore rules.
func ParseIgnore(text string) *Ignore {
	ig := &Ignore{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := rule{exclude: true}
		if strings.HasPrefix(line, "!") {
			r.exclude, line = false, strings.TrimSpace(line[1:])
		}
		r.pattern = strings.Trim(path.Clean(strings.TrimPrefix(line, "/")), "/")
		ig.rules = append(ig.rules, r)
	}
	return ig
}

// Ignored reports whether the context-relative, slash-separated path p is left out of the context: the
// last rule that matches p or one of its parent directories decides.
func (ig *Ignore) Ignored(p string) bool {
	p = strings.Trim(path.Clean(p), "/")
	ignored := false
	for _, r := range ig.rules {
		if matches(r.pattern, p) {
			ignored = r.exclude
		}
	}
	return ignored
}

func matches(pattern, p string) bool {
	for q := p; ; {
		if ok, _ := path.Match(pattern, q); ok {
			return true
		}
		if strings.HasPrefix(pattern, "**/") {
			if ok, _ := path.Match(strings.TrimPrefix(pattern, "**/"), path.Base(q)); ok {
				return true
			}
		}
		i := strings.LastIndex(q, "/")
		if i < 0 {
			return false
		}
		q = q[:i]
	}
}
