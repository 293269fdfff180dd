# The commands operators and developers use. CI runs `bash .ci/run`, which
# starts PostgreSQL and dynalite and then runs `make check`.
.PHONY: run demo test check bench bench-quick build

build:
	CGO_ENABLED=0 go build -trimpath -o bin/sandbox-broker ./cmd/sandbox-broker

demo:
	go run ./cmd/sandbox-broker serve --demo

# test: everything under the race detector, then the big-data tests (100k
# pools, crash recovery at full size) without it, where they run 30x faster.
test:
	go test -race -timeout 20m ./...
	go test -count=1 -timeout 20m -run 'Large|Crash|Scale' ./...

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo 'run gofmt -w'; exit 1)
	go vet ./...
	staticcheck ./...
	$(MAKE) test

bench:
	go run ./bench

bench-quick:
	go run ./bench -quick
