# shardproxy: the single entry point.
#   make deps     install the Debian packages the build, tests and bench need
#   make          build build/shardproxy
#   make run      start the demo upstream and the proxy on conf/shardproxy.json
#   make test     unit tests (cmocka) + end-to-end tests on the real binary
#   make test SANITIZE=1   the same, built with ASan + UBSan (in build/san)
#   make fuzz     each libFuzzer target for FUZZ_SECONDS (default 30)
#   make bench    shardproxy vs HAProxy vs nginx stream vs direct -> docs/BENCHMARKS.md
#   make soak     SOAK_SECONDS (default 600) of mixed load, reloads and shard kills; not in make test
#   make cluster-test   instances behind Linux ECMP in network namespaces (root; not in make test)
#   make format / make lint / make clean

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
SANFLAGS :=
endif

CC ?= cc
CLANG ?= clang
BPFTOOL ?= bpftool
PYTHON ?= python3

CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wno-missing-field-initializers \
	  -D_GNU_SOURCE -I. -I$(BUILD) $(SANFLAGS) -MMD -MP
LDFLAGS += $(SANFLAGS)
LDLIBS := -luring -lbpf -ljansson -lcares -lelf -lz -lm

# Packages a fresh Debian 12 needs to build the binary (BUILD_PKGS: what the
# Dockerfile's build stage installs, through `make deps-build`), and on top of
# them for tests and bench.
BUILD_PKGS := gcc make pkg-config libc6-dev linux-libc-dev liburing-dev libbpf-dev \
	libelf-dev zlib1g-dev libjansson-dev libc-ares-dev bpftool clang llvm
PKGS := $(BUILD_PKGS) libcmocka-dev libseccomp-dev \
	python3 wrk curl haproxy nginx libnginx-mod-stream procps iproute2 util-linux \
	valgrind cppcheck clang-format prometheus openssl \
	redis-server redis-tools postgresql-15 postgresql-client-15 linux-perf strace nftables

LIB_SRC := $(wildcard conf/*.c runtime/*.c shard/*.c proxy/*.c) bpf/steer.c
LIB_SRC := $(filter-out proxy/main.c,$(LIB_SRC))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
DEMO_BIN := $(BUILD)/demo-upstream

.PHONY: all deps deps-build run test unit e2e bench fuzz soak clean format lint cluster-test

all: $(BUILD)/shardproxy $(DEMO_BIN)

# Debian starts a service when its package is installed (redis-server,
# postgresql-15, haproxy, nginx) wherever an init runs; the bench starts its own
# on free ports, so during the install a policy-rc.d that exits 101 ("action
# forbidden") stops that. One already there (e.g. Docker's) is moved aside and
# put back afterwards, on success, failure or interrupt.
RCD := /usr/sbin/policy-rc.d
DEPS_NO_SERVICES := \
	if [ -e $(RCD) ] || [ -L $(RCD) ]; then mv -f $(RCD) $(RCD).shardproxy-deps || exit 1; fi; \
	trap 'rc=$$?; rm -f $(RCD); if [ -e $(RCD).shardproxy-deps ] || [ -L $(RCD).shardproxy-deps ]; then \
		mv -f $(RCD).shardproxy-deps $(RCD); fi; exit $$rc' EXIT; \
	trap 'exit 130' INT TERM HUP; \
	printf '\043!/bin/sh\nexit 101\n' > $(RCD) && chmod 0755 $(RCD) || exit 1;

# deps waits for deps-build, so a parallel make never runs two apt-gets.
deps: deps-build
deps: DEPS_PKGS = $(PKGS)
deps-build: DEPS_PKGS = $(BUILD_PKGS)
deps deps-build:
	@missing=""; for p in $(DEPS_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "deps: installing$$missing"; \
			$(DEPS_NO_SERVICES) \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing \
			|| { echo "deps: apt-get failed"; exit 1; }; \
		else \
			echo "deps: missing packages; run as root:"; \
			echo "  apt-get update && apt-get install -y$$missing"; exit 1; \
		fi; \
	fi

$(BUILD)/%.o: %.c | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# BPF: clang -> object -> skeleton header (generated, never committed).
$(BUILD)/steer.bpf.o: bpf/steer.bpf.c bpf/steer.h $(wildcard bpf/*.h) | deps-build
	@mkdir -p $(dir $@)
	$(CLANG) -g -O2 -target bpf -D__TARGET_ARCH_x86 -I. -I/usr/include/$(shell uname -m)-linux-gnu \
		-c -o $@ $<
	llvm-strip -g $@ 2>/dev/null || true

$(BUILD)/steer.skel.h: $(BUILD)/steer.bpf.o
	$(BPFTOOL) gen skeleton $< name steer_bpf > $@.tmp && mv $@.tmp $@

$(BUILD)/bpf/steer.o: $(BUILD)/steer.skel.h

$(BUILD)/libshardproxy.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/shardproxy: $(BUILD)/proxy/main.o $(BUILD)/libshardproxy.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(DEMO_BIN): tests/demo/demo_upstream.c | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $<

# Runs a command under a Docker-format seccomp profile (the container tests).
$(BUILD)/profile_run: tests/seccomp/profile_run.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -lseccomp -ljansson

# Runs a command with the io_uring system calls denied (the e2e fallback tests).
$(BUILD)/no_uring: tests/seccomp/no_uring.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libshardproxy.a | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libshardproxy.a $(LDLIBS) -lcmocka

# libFuzzer targets, each run for FUZZ_SECONDS (CI: 30).
FUZZ_SECONDS ?= 30
FUZZ_DIR := build/fuzz
FUZZ_FLAGS := -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I.
FUZZ_BIN := $(FUZZ_DIR)/fuzz_proxyproto $(FUZZ_DIR)/fuzz_tls_sni $(FUZZ_DIR)/fuzz_conf

$(FUZZ_DIR)/fuzz_proxyproto: tests/fuzz/fuzz_proxyproto.c shard/proxyproto.c | deps
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(FUZZ_DIR)/fuzz_tls_sni: tests/fuzz/fuzz_tls_sni.c shard/tls_sni.c | deps
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $^
$(FUZZ_DIR)/fuzz_conf: tests/fuzz/fuzz_conf.c conf/conf.c conf/json_pos.c | deps
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -DSP_CONF_NUMERIC_ONLY -o $@ $^ -ljansson

fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
		name=$$(basename $$f); corpus=tests/fuzz/corpus/$${name#fuzz_}; \
		work=$(FUZZ_DIR)/corpus-$${name#fuzz_}; mkdir -p $$work; \
		dict=""; [ -f tests/fuzz/$${name#fuzz_}.dict ] && dict=-dict=tests/fuzz/$${name#fuzz_}.dict; \
		echo "== $$name for $(FUZZ_SECONDS) s"; \
		$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $$dict \
			-artifact_prefix=$(FUZZ_DIR)/$$name- $$work $$corpus > $(FUZZ_DIR)/$$name.log 2>&1 \
			|| { tail -n 40 $(FUZZ_DIR)/$$name.log; echo "$$name: FAILED"; exit 1; }; \
		tail -n 1 $(FUZZ_DIR)/$$name.log; \
	done

run: all
	@./tests/demo/run-demo.sh $(BUILD)

unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do echo "== $$t"; $$t || fail=1; done; exit $$fail

# Twice: on the event loop auto picks (io_uring where it runs), then on epoll.
e2e: deps all $(BUILD)/profile_run $(BUILD)/no_uring
	@echo "== e2e, io auto"
	$(PYTHON) tests/e2e/run.py --build $(BUILD)
	@echo "== e2e, io epoll (E2E_IO=epoll)"
	E2E_IO=epoll $(PYTHON) tests/e2e/run.py --build $(BUILD)

test: unit e2e

bench: deps all
	$(PYTHON) tests/bench/bench.py --build $(BUILD) --out docs/BENCHMARKS.md

# Not part of `make test`: it runs for SOAK_SECONDS (tests/soak/soak.py says
# what it does and what passes).
SOAK_SECONDS ?= 600
soak: deps all
	$(PYTHON) tests/soak/soak.py --build $(BUILD) --seconds $(SOAK_SECONDS)

# Several instances behind a Linux nexthop group, in network namespaces
# (tests/cluster/cluster.py; root). CLUSTER_ARGS="--crash-detect-ms 200,2000" etc.
CLUSTER_ARGS ?=
cluster-test: deps all
	$(PYTHON) tests/cluster/cluster.py --build $(BUILD) $(CLUSTER_ARGS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

lint: | deps
	cppcheck --quiet --enable=warning,performance,portability --error-exitcode=1 \
		--suppress=missingIncludeSystem -I. $(LIB_SRC) proxy/main.c

clean:
	rm -rf build

# make install [PREFIX=/usr/local] [DESTDIR=]: the binary (the BPF object is
# built into it), the man page, the systemd unit (with PREFIX's path) and,
# unless one is there already, the default configuration.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
SBINDIR := $(PREFIX)/sbin
MAN8DIR := $(PREFIX)/share/man/man8
UNITDIR ?= $(PREFIX)/lib/systemd/system

.PHONY: install uninstall
install: $(BUILD)/shardproxy
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MAN8DIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSCONFDIR)/shardproxy
	install -m 0755 $(BUILD)/shardproxy $(DESTDIR)$(SBINDIR)/shardproxy
	install -m 0644 dist/shardproxy.8 $(DESTDIR)$(MAN8DIR)/shardproxy.8
	sed -e 's|/usr/local/sbin/|$(SBINDIR)/|g' -e 's|/etc/shardproxy/|$(SYSCONFDIR)/shardproxy/|g' \
		dist/shardproxy.service > $(DESTDIR)$(UNITDIR)/shardproxy.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/shardproxy.service.tmp
	mv $(DESTDIR)$(UNITDIR)/shardproxy.service.tmp $(DESTDIR)$(UNITDIR)/shardproxy.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/shardproxy/shardproxy.json ]; then \
		echo "install: keeping the existing $(DESTDIR)$(SYSCONFDIR)/shardproxy/shardproxy.json"; \
	else \
		install -m 0644 dist/shardproxy.json $(DESTDIR)$(SYSCONFDIR)/shardproxy/shardproxy.json; \
	fi

# The configuration is the operator's: uninstall leaves it.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/shardproxy $(DESTDIR)$(MAN8DIR)/shardproxy.8 \
		$(DESTDIR)$(UNITDIR)/shardproxy.service

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
