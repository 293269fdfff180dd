package main

import (
	"context"
	"errors"
	"io"
)

func runAdmin(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return usageError{errors.New("admin commands are not available yet")}
}
