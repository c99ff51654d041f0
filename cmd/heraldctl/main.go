// Command heraldctl is the Herald command-line client: it creates apps,
// registers devices, sends messages and shows their status through the REST
// API, and listens as a device through the Go SDK.
//
//	heraldctl app create --name demo
//	heraldctl device register --app-key K --app-secret S
//	heraldctl listen --app-key K --device-id D --token T --count 1
//	heraldctl send --app-key K --app-secret S --device D --title Hi --body there
//	heraldctl status MESSAGE_ID --app-key K --app-secret S
//
// Run `heraldctl help` for every flag.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newCLI(os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
