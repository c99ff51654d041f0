package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	herald "github.com/heraldpush/herald/sdk/go"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed (API error, network error)
	exitUsage = 2 // bad command line
)

const usage = `usage: heraldctl [global flags] <command> [flags]

commands:
  app create --name N [--admin-token T]
  device register --app-key K --app-secret S [--device-id D] [--platform android] [--alias A]
  device delete --app-key K --app-secret S --device-id D
  send --app-key K --app-secret S AUDIENCE [--platform P] [--title T] [--body B]
       [--data k=v ...] [--badge N|+1] [--sound S] [--click-action A] [--image URL]
       [--channel C] [--ttl SECONDS] [--priority high|normal] [--collapse-id X]
       [--idempotency-key Y] [--send-at RFC3339|+DURATION] [--spread SECONDS]
     AUDIENCE is one of: --device D [--device D2 ...] | --alias A [--alias A2 ...] |
       --tags 'EXPR' | --topic T | --all
  status MESSAGE_ID --app-key K --app-secret S
  cancel MESSAGE_ID --app-key K --app-secret S   (cancels a scheduled send, recalls a sent one)
  listen --app-key K --device-id D --token T [--count N] [--topic T ...] [--endpoints URL|none]

global flags (also accepted after the command):
  --api URL        REST API base URL (env HERALD_API, default http://127.0.0.1:8080)
  --gateway ADDR   device gateway host:port (env HERALD_GATEWAY, default 127.0.0.1:5222)
  --json           print machine-readable JSON

environment: HERALD_ADMIN_TOKEN, HERALD_APP_KEY, HERALD_APP_SECRET,
HERALD_DEVICE_ID, HERALD_DEVICE_TOKEN supply the matching flags; the admin
token is also read from ./data/admin-token (written by make run).
`

// cli holds the global flags and the process's streams and environment.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	http           *http.Client
	adminTokenFile string

	api, gateway string
	json         bool
}

func newCLI(stdout, stderr io.Writer, getenv func(string) string) *cli {
	return &cli{
		stdout:         stdout,
		stderr:         stderr,
		getenv:         getenv,
		now:            time.Now,
		http:           &http.Client{Timeout: 30 * time.Second},
		adminTokenFile: "data/admin-token",
		api:            envOr(getenv, "HERALD_API", "http://127.0.0.1:8080"),
		gateway:        envOr(getenv, "HERALD_GATEWAY", "127.0.0.1:5222"),
	}
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// run executes one command line and returns the exit status.
func (c *cli) run(ctx context.Context, args []string) int {
	fs := c.flagSet("heraldctl")
	fs.Usage = func() { fmt.Fprint(c.stderr, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	err := c.dispatch(ctx, fs.Args())
	var ue *usageError
	var ae *apiError
	var ce *herald.CloseError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "heraldctl: %s\nRun 'heraldctl help' for usage.\n", ue.msg)
		return exitUsage
	case errors.As(err, &ae):
		fmt.Fprintf(c.stderr, "heraldctl: %s: %s\n", ae.Code, ae.Message)
	case errors.As(err, &ce):
		fmt.Fprintf(c.stderr, "heraldctl: %s: %s\n", strings.ReplaceAll(ce.Code.String(), " ", "_"), ce.Reason)
	default:
		fmt.Fprintf(c.stderr, "heraldctl: %v\n", err)
	}
	return exitError
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("no command")
	}
	cmd, rest := args[0], args[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch {
	case cmd == "help":
		fmt.Fprint(c.stdout, usage)
		return nil
	case cmd == "app" && sub == "create":
		return c.appCreate(ctx, rest[1:])
	case cmd == "device" && sub == "register":
		return c.deviceRegister(ctx, rest[1:])
	case cmd == "device" && sub == "delete":
		return c.deviceDelete(ctx, rest[1:])
	case cmd == "send":
		return c.send(ctx, rest)
	case cmd == "status":
		return c.status(ctx, rest)
	case cmd == "cancel":
		return c.cancel(ctx, rest)
	case cmd == "listen":
		return c.listen(ctx, rest)
	case cmd == "app" || cmd == "device":
		return usagef("unknown command %q", strings.TrimSpace(cmd+" "+sub))
	}
	return usagef("unknown command %q", cmd)
}

// flagSet returns a flag set that also accepts the global flags.
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.api, "api", c.api, "REST API base `URL`")
	fs.StringVar(&c.gateway, "gateway", c.gateway, "device gateway `host:port`")
	fs.BoolVar(&c.json, "json", c.json, "print JSON")
	return fs
}

// parse parses flags and positional arguments in any order. Flag errors
// are usage errors (the flag package has already printed them).
func parse(fs *flag.FlagSet, args []string) (positional []string, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// appFlags registers --app-key and --app-secret with their environment defaults.
func (c *cli) appFlags(fs *flag.FlagSet) (key, secret *string) {
	key = fs.String("app-key", c.getenv("HERALD_APP_KEY"), "app key (env HERALD_APP_KEY)")
	secret = fs.String("app-secret", c.getenv("HERALD_APP_SECRET"), "app secret (env HERALD_APP_SECRET)")
	return key, secret
}

// require returns a usage error naming the first empty flag.
func require(cmd string, flags ...[2]string) error {
	for _, f := range flags {
		if f[1] == "" {
			return usagef("%s: --%s is required", cmd, f[0])
		}
	}
	return nil
}

func noPositional(cmd string, pos []string) error {
	if len(pos) > 0 {
		return usagef("%s: unexpected argument %q", cmd, pos[0])
	}
	return nil
}

func (c *cli) client() *apiClient {
	return &apiClient{base: strings.TrimRight(c.api, "/"), http: c.http}
}

// adminToken returns the admin token from the flag, the environment or the file.
func (c *cli) adminToken(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if v := c.getenv("HERALD_ADMIN_TOKEN"); v != "" {
		return v, nil
	}
	b, err := os.ReadFile(c.adminTokenFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", usagef("app create: no admin token: give --admin-token, set HERALD_ADMIN_TOKEN or run from the directory holding %s", c.adminTokenFile)
		}
		return "", fmt.Errorf("read admin token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
