// Command mkimage writes the agent's container image as an OCI image-layout
// tar, without a container engine (`make image`).
//
//	go run ./internal/ociimage/mkimage -o bin/overtime-image.tar -version v1 -commit abc
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"overtime/internal/ociimage"
)

func main() {
	out := flag.String("o", "bin/overtime-image.tar", "the image archive to write")
	version := flag.String("version", "dev", "version stamped into the binary and the image's tag")
	commit := flag.String("commit", "unknown", "commit stamped into the binary")
	flag.Parse()
	name, err := ociimage.BuildAgent(context.Background(), ".", *out, *version, *commit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s\n", *out, name)
}
