// Command image-check replays the build of a Dockerfile without a Docker engine and checks the result:
//
//   - the build context is staged as the Dockerfile's COPY instructions would see it (.dockerignore
//     applied), and a COPY of something missing or ignored fails;
//   - every package the binary is built from (`go list -deps` with the build's GOOS, GOARCH, CGO_ENABLED
//     and tags) must be in the staged context, so a directory the Dockerfile forgets to COPY fails here
//     and not in a release;
//   - the RUN that calls `go build` is run as written, with the ARG values substituted, in the staged
//     context, so the flags are exactly the Dockerfile's;
//   - the binaries a later stage copies (COPY --from) must exist, must be static (no ELF interpreter, no
//     shared libraries) and the final stage must switch to a non-root USER;
//   - optionally the binary is run and one line of its output must carry the version.
package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/ambient-dev/ambient-operator/hack/release/internal/dockerfile"
)

type buildArgs map[string]string

func (b buildArgs) String() string { return fmt.Sprint(map[string]string(b)) }
func (b buildArgs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q is not NAME=VALUE", s)
	}
	b[k] = v
	return nil
}

type checker struct {
	file, contextDir string
	args             buildArgs
	df               *dockerfile.Dockerfile
	ignore           *dockerfile.Ignore
	tmp              string
	roots            []string // staged root file system of each stage
	built            []string // files the replayed go build commands wrote (paths inside a stage root)
}

func main() {
	c := &checker{args: buildArgs{}}
	var execArgs, expect, version, out string
	flag.StringVar(&c.file, "dockerfile", "Dockerfile", "Dockerfile to replay.")
	flag.StringVar(&c.contextDir, "context", ".", "Build context directory.")
	flag.Var(c.args, "build-arg", "NAME=VALUE, as docker build --build-arg (repeatable).")
	flag.StringVar(&version, "version", "", "Version: passed as the VERSION build argument and expected in the output of --exec.")
	flag.StringVar(&execArgs, "exec", "", "Run the final image's binary with these arguments (split like sh).")
	flag.StringVar(&expect, "expect", "", "With --exec: a line of the output must contain this text and the version.")
	flag.StringVar(&out, "out", "", "Copy the built binaries into this directory.")
	flag.Parse()
	if version != "" {
		c.args["VERSION"] = version
	}
	if err := c.run(execArgs, expect, version, out); err != nil {
		fmt.Fprintf(os.Stderr, "image-check %s: %v\n", c.file, err)
		os.Exit(1)
	}
}

func (c *checker) run(execArgs, expect, version, out string) error {
	var err error
	if c.df, err = dockerfile.ParseFile(c.file); err != nil {
		return err
	}
	if c.ignore, err = dockerfile.ReadIgnore(c.contextDir); err != nil {
		return err
	}
	if c.tmp, err = os.MkdirTemp("", "image-check-"); err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(c.tmp) }()

	for i := range c.df.Stages {
		if err := c.stage(i); err != nil {
			return err
		}
	}
	final := &c.df.Stages[len(c.df.Stages)-1]
	if len(c.built) == 0 {
		fmt.Printf("%s: every COPY source is in the context (nothing to build)\n", c.file)
		return nil
	}
	if err := checkUser(final); err != nil {
		return err
	}
	entry, err := entrypoint(final)
	if err != nil {
		return err
	}
	if entry != "" {
		entry = filepath.Join(c.roots[len(c.roots)-1], filepath.FromSlash(entry))
	}
	for _, b := range c.built {
		if err := checkStatic(b); err != nil {
			return err
		}
		fmt.Printf("%s: %s is a static ELF executable (no interpreter, no shared libraries)\n", c.file, filepath.Base(b))
		if out != "" {
			if err := copyFile(b, filepath.Join(out, filepath.Base(b)), 0o755); err != nil {
				return err
			}
		}
	}
	if execArgs != "" {
		if entry == "" {
			return fmt.Errorf("--exec: the final stage copies no binary from a build stage")
		}
		return c.exec(entry, execArgs, expect, version)
	}
	return nil
}

// entrypoint is the executable the final stage runs: the first element of its ENTRYPOINT (exec form),
// else the destination of its last COPY from a build stage; "" when there is neither.
func entrypoint(final *dockerfile.Stage) (string, error) {
	entry := ""
	for _, in := range final.Instr {
		switch {
		case in.Cmd == "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.Args[0]), &argv); err != nil || len(argv) == 0 {
				return "", fmt.Errorf("line %d: ENTRYPOINT must be the exec form, e.g. [\"/usr/local/bin/app\"]", in.Line)
			}
			return argv[0], nil
		case in.Cmd == "COPY" && in.Flags["from"] != "":
			entry = in.Args[len(in.Args)-1]
		}
	}
	return entry, nil
}

// stage replays stage i: its COPY instructions and the RUN that builds Go code.
func (c *checker) stage(i int) error {
	st := &c.df.Stages[i]
	root := filepath.Join(c.tmp, fmt.Sprintf("stage%d", i))
	c.roots = append(c.roots, root)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	vars := st.Args(c.args)
	workdir := "/"
	for _, in := range st.Instr {
		switch in.Cmd {
		case "WORKDIR":
			workdir = path.Join(workdir, dockerfile.Expand(in.Args[0], vars))
		case "COPY", "ADD":
			if len(in.Args) < 2 {
				return fmt.Errorf("line %d: %s needs a source and a destination", in.Line, in.Cmd)
			}
			srcs, dest := in.Args[:len(in.Args)-1], in.Args[len(in.Args)-1]
			if !path.IsAbs(dest) {
				dest = path.Join(workdir, dest) + map[bool]string{true: "/"}[strings.HasSuffix(dest, "/") || dest == "."]
			}
			if from := in.Flags["from"]; from != "" {
				if err := c.copyFromStage(in, from, srcs, root, dest); err != nil {
					return err
				}
				continue
			}
			if err := c.copyFromContext(in, srcs, root, dest); err != nil {
				return err
			}
		case "RUN":
			cmd := dockerfile.Expand(in.Args[0], vars)
			if !strings.Contains(cmd, "go build") {
				fmt.Printf("%s:%d: not replayed: RUN %s\n", c.file, in.Line, cmd)
				continue
			}
			if err := c.goBuild(st, in, cmd, root, workdir); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *checker) copyFromContext(in dockerfile.Instruction, srcs []string, root, dest string) error {
	ctxAbs, err := filepath.Abs(c.contextDir)
	if err != nil {
		return err
	}
	for _, src := range srcs {
		rel := strings.Trim(path.Clean("/"+src), "/") // "." and "./" become ""
		matches, err := filepath.Glob(filepath.Join(ctxAbs, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		copied := 0
		for _, m := range matches {
			info, err := os.Stat(m)
			if err != nil {
				return err
			}
			target := dest
			if !info.IsDir() && (strings.HasSuffix(dest, "/") || len(srcs) > 1) {
				target = path.Join(dest, filepath.Base(m))
			}
			err = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				r, _ := filepath.Rel(ctxAbs, p)
				r = filepath.ToSlash(r)
				if r != "." && c.ignore.Ignored(r) {
					if d.IsDir() {
						return filepath.SkipDir
					}
					return nil
				}
				if d.IsDir() {
					return nil
				}
				within, _ := filepath.Rel(m, p)
				to := target
				if info.IsDir() {
					to = path.Join(dest, filepath.ToSlash(within))
				}
				copied++
				return copyFile(p, filepath.Join(root, filepath.FromSlash(to)), 0o644)
			})
			if err != nil {
				return err
			}
		}
		if copied == 0 {
			return fmt.Errorf("line %d: COPY %s: nothing in the build context %s matches (missing, or left out by .dockerignore)",
				in.Line, src, c.contextDir)
		}
	}
	return nil
}

func (c *checker) copyFromStage(in dockerfile.Instruction, from string, srcs []string, root, dest string) error {
	idx := -1
	for i, s := range c.df.Stages[:len(c.roots)-1] {
		if s.Name == from || fmt.Sprint(i) == from {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("line %d: COPY --from=%s: no earlier stage of that name (images are not checked)", in.Line, from)
	}
	for _, src := range srcs {
		p := filepath.Join(c.roots[idx], filepath.FromSlash(src))
		info, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("line %d: COPY --from=%s %s: the build stage did not produce it", in.Line, from, src)
		}
		if info.IsDir() {
			return fmt.Errorf("line %d: COPY --from=%s %s: copying directories between stages is not checked", in.Line, from, src)
		}
		to := dest
		if strings.HasSuffix(dest, "/") {
			to = path.Join(dest, path.Base(src))
		}
		if err := copyFile(p, filepath.Join(root, filepath.FromSlash(to)), info.Mode()); err != nil {
			return err
		}
	}
	return nil
}

// goBuild runs the RUN's go build in the staged context, after checking that the context holds every
// package it needs.
func (c *checker) goBuild(st *dockerfile.Stage, in dockerfile.Instruction, cmd, root, workdir string) error {
	words, err := dockerfile.Words(cmd)
	if err != nil {
		return fmt.Errorf("line %d: %w", in.Line, err)
	}
	env := map[string]string{}
	for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
		k, v, _ := strings.Cut(words[0], "=")
		env[k] = v
		words = words[1:]
	}
	if len(words) < 2 || words[0] != "go" || words[1] != "build" {
		return fmt.Errorf("line %d: cannot replay %q: the RUN must be a single `[VAR=value...] go build ...`", in.Line, cmd)
	}
	if err := checkGoVersion(st.Base); err != nil {
		return fmt.Errorf("line %d: %w", in.Line, err)
	}
	args := words[2:]
	valueFlags := map[string]bool{"-o": true, "-ldflags": true, "-gcflags": true, "-asmflags": true, "-tags": true,
		"-mod": true, "-p": true, "-buildmode": true, "-pgo": true, "-overlay": true, "-modfile": true, "-buildvcs": true}
	var pkgs, tags []string
	outputs := 0
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			pkgs = append(pkgs, a)
			continue
		}
		name, val, hasVal := strings.Cut(a, "=")
		if valueFlags[name] && !hasVal {
			if i+1 >= len(args) {
				return fmt.Errorf("line %d: %s needs a value", in.Line, name)
			}
			i++
			val = args[i]
		}
		switch name {
		case "-o":
			out := val
			if !path.IsAbs(out) {
				out = path.Join(workdir, out)
			}
			host := filepath.Join(root, filepath.FromSlash(out))
			if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
				return err
			}
			args[i] = host
			if !hasVal {
				args[i-1] = "-o"
			} else {
				args[i] = "-o=" + host
			}
			c.built = append(c.built, host)
			outputs++
		case "-tags":
			tags = strings.Split(val, ",")
		}
	}
	if outputs != 1 {
		return fmt.Errorf("line %d: the go build must name its output with -o", in.Line)
	}
	if len(pkgs) == 0 {
		pkgs = []string{"."}
	}
	goEnv := buildEnv(env)
	if err := c.checkCopied(goEnv, tags, pkgs, root, workdir); err != nil {
		return fmt.Errorf("line %d: %w", in.Line, err)
	}
	fmt.Printf("%s:%d: replaying in the staged context: %s\n", c.file, in.Line, cmd)
	run := exec.Command("go", append([]string{"build"}, args...)...)
	run.Dir = filepath.Join(root, filepath.FromSlash(workdir))
	run.Env = goEnv
	run.Stdout, run.Stderr = os.Stdout, os.Stderr
	if err := run.Run(); err != nil {
		return fmt.Errorf("line %d: go build in the staged context failed: %w", in.Line, err)
	}
	return nil
}

// buildEnv is this machine's Go environment with the RUN's variables, without the GOFLAGS, go.work or
// CGO settings of this machine, which the build image does not have.
func buildEnv(vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, set := vars[k]; set || k == "GOFLAGS" || k == "GOWORK" || k == "CGO_ENABLED" || k == "GOOS" || k == "GOARCH" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GOFLAGS=", "GOWORK=off")
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

type goPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	SFiles     []string
	EmbedFiles []string
	Module     *struct{ GoMod string }
}

// checkCopied lists the packages the build needs in the original context and fails when a file of one
// of them did not make it into the staged context.
func (c *checker) checkCopied(env, tags, pkgs []string, root, workdir string) error {
	ctxAbs, err := filepath.Abs(c.contextDir)
	if err != nil {
		return err
	}
	args := []string{"list", "-deps", "-json=ImportPath,Dir,Standard,GoFiles,SFiles,EmbedFiles,Module"}
	if len(tags) > 0 {
		args = append(args, "-tags="+strings.Join(tags, ","))
	}
	list := exec.Command("go", append(args, pkgs...)...)
	list.Dir, list.Env, list.Stderr = ctxAbs, env, os.Stderr
	outb, err := list.Output()
	if err != nil {
		return fmt.Errorf("go list -deps %s in %s: %w", strings.Join(pkgs, " "), c.contextDir, err)
	}
	staged := filepath.Join(root, filepath.FromSlash(workdir))
	var missing []string
	seen := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(outb))
	for {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
		rel, err := filepath.Rel(ctxAbs, p.Dir)
		if p.Standard || err != nil || strings.HasPrefix(rel, "..") {
			continue // the standard library and modules come from the image and the module cache
		}
		files := append(append(append([]string{}, p.GoFiles...), p.SFiles...), p.EmbedFiles...)
		if p.Module != nil && p.Module.GoMod != "" {
			if r, err := filepath.Rel(ctxAbs, p.Module.GoMod); err == nil && !strings.HasPrefix(r, "..") && !seen[r] {
				seen[r] = true
				for _, f := range []string{r, strings.TrimSuffix(r, ".mod") + ".sum"} {
					if _, err := os.Stat(filepath.Join(ctxAbs, f)); err == nil {
						if _, err := os.Stat(filepath.Join(staged, f)); err != nil {
							missing = append(missing, f)
						}
					}
				}
			}
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(staged, rel, f)); err != nil {
				missing = append(missing, fmt.Sprintf("%s (package %s)", filepath.ToSlash(filepath.Join(rel, f)), p.ImportPath))
				break // one file names the directory
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the build needs files that the Dockerfile does not COPY into %s (or that .dockerignore leaves out):\n  %s",
			workdir, strings.Join(missing, "\n  "))
	}
	return nil
}

var golangImage = regexp.MustCompile(`^(?:docker\.io/(?:library/)?)?golang:(\d+\.\d+)`)

// checkGoVersion fails when the build image's Go minor version is not this machine's: the replayed build
// would not be the image's build.
func checkGoVersion(base string) error {
	m := golangImage.FindStringSubmatch(base)
	if m == nil {
		return fmt.Errorf("the build stage's base %q is not a golang:<major.minor> image; the Go version cannot be compared", base)
	}
	local := strings.TrimPrefix(runtime.Version(), "go")
	if local != m[1] && !strings.HasPrefix(local, m[1]+".") {
		return fmt.Errorf("the build image %s has Go %s but this check runs Go %s: align them", base, m[1], local)
	}
	return nil
}

// checkUser fails unless the final stage runs as a user other than root.
func checkUser(st *dockerfile.Stage) error {
	user := ""
	for _, in := range st.Instr {
		if in.Cmd == "USER" && len(in.Args) > 0 {
			user = in.Args[0]
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		return fmt.Errorf("the final stage (line %d) must set a non-root USER, has %q", st.Line, user)
	}
	return nil
}

// checkStatic fails unless p is an ELF executable without an interpreter or shared libraries.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w", p, err)
	}
	defer func() { _ = f.Close() }()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it has an ELF interpreter): build it with CGO_ENABLED=0", filepath.Base(p))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return err
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v: build it with CGO_ENABLED=0", filepath.Base(p), libs)
	}
	return nil
}

// exec runs the binary with a clean environment (no kubeconfig, no cluster) and looks for the version.
func (c *checker) exec(bin, argLine, expect, version string) error {
	args, err := dockerfile.Words(argLine)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	home := filepath.Join(c.tmp, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"HOME=" + home, "KUBECONFIG=" + filepath.Join(home, "no-kubeconfig"), "PATH=/usr/bin:/bin"}
	outb, _ := cmd.CombinedOutput() // the exit code does not matter: the operator exits without a cluster
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s did not finish within 30s", filepath.Base(bin), argLine)
	}
	versionRE := regexp.MustCompile(`(^|[^0-9A-Za-z.+-])v?` + regexp.QuoteMeta(version) + `($|[^0-9A-Za-z.+-])`)
	for _, line := range strings.Split(string(outb), "\n") {
		if strings.Contains(line, expect) && (version == "" || versionRE.MatchString(line)) {
			fmt.Printf("%s: `%s %s` prints: %s\n", c.file, filepath.Base(bin), argLine, strings.TrimSpace(line))
			return nil
		}
	}
	return fmt.Errorf("`%s %s` printed no line with %q and version %q; it printed:\n%s", filepath.Base(bin), argLine, expect, version, outb)
}

func copyFile(from, to string, mode fs.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, data, mode.Perm())
}
