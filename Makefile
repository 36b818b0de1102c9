# minivirt: `make demo` and `make test` do all the set-up on a fresh Debian 12
# machine (as root they install what is missing; otherwise they print the command).

GO        ?= go
BUILD     := $(CURDIR)/build
BIN       := $(BUILD)/minivirt
FUZZTIME  ?= 5s
export GOFLAGS ?= -buildvcs=false

.PHONY: all build deps test unit fuzz lint demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/minivirt

deps:
	@scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -count=1 ./...

# Each fuzz target runs for FUZZTIME: it must find no panic and no round-trip difference.
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzDomain -fuzztime=$(FUZZTIME) ./pkg/domain

test: deps lint unit fuzz

demo: deps build
	@scripts/demo.sh $(BIN)

clean:
	rm -rf $(BUILD)
