# netmigrate: the two commands are `make demo` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash
LAB_BIN := target/debug/netmigrate-lab

.PHONY: fuzz fuzz-ci deny all deps build demo demo-hold paper paper-xen test-xen bench-dhcp bench-dns appliance-image test fmt-check lint unit-test lab-test cleanup clean bench-placement bench-inventory bench-ftp bench-disk bench-disk-xen installer host-image bench-deploy

all: build

## deps: install what a fresh Debian 12 lacks (apt packages, guest kernel, cargo components)
deps:
	@bash tests/scripts/deps.sh

build: deps
	$(CARGO) build --workspace

## demo: the demo lab (appliance, hosts A B C, a client); the paper's scenario 1 cold and live
demo: build
	$(LAB_BIN) demo

## demo-hold: the same, kept up until Ctrl-C
demo-hold: build
	$(LAB_BIN) demo --hold

## paper: the paper's five scenarios, cold and live, next to the hand-driven QEMU baseline (root)
paper: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab paper --out results

## paper-xen: scenario 1 on three nested Xen hosts, cold and live, next to hand-driven xl (root)
paper-xen: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab paper-xen --out results/xen

## test-xen: every Xen lab test (the smoke test is also in `make test`), one at a time, and a
## bare machine deployed with the Xen host image (root)
test-xen: deps
	$(CARGO) build --workspace
	$(CARGO) test -p netmigrate-lab --test xen -- --include-ignored --test-threads=1
	$(CARGO) test -p netmigrate-lab --test deploy -- --ignored --test-threads=1

## test: format check, clippy -D warnings, cargo deny, unit tests, 30 s per fuzz target, lab tests (root)
test: deps fmt-check lint deny unit-test fuzz-ci lab-test

fmt-check:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Everything but the lab: no root, no namespaces.
unit-test:
	$(CARGO) test --workspace --exclude netmigrate-lab

# The lab tests: real sshd, Open vSwitch and QEMU guests in network namespaces.
lab-test:
	$(CARGO) build --workspace
	$(CARGO) test -p netmigrate-lab

## bench-placement: planning speed (1,000 VMs x 100 hosts) and packing quality vs the optimum
bench-placement:
	$(CARGO) bench -p netmigrate --bench placement

## bench-inventory: `hosts collect` over 20 lab hosts vs a sequential ssh loop (root)
bench-inventory: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=target/release/netmigrate target/release/netmigrate-lab bench-inventory --hosts 20 --runs 5

## bench-ftp: 1 GiB up and down with curl: netmigrate vs vsftpd vs the iperf3 ceiling (root)
bench-ftp: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=target/release/netmigrate target/release/netmigrate-lab bench-ftp --mib 1024 --runs 3

## bench-disk: live moves with a local disk vs hand-driven QMP mirror + migrate, and vs a RAM-only move (root)
bench-disk: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab bench-disk --runs 3

## bench-disk-xen: cold moves with a local disk on nested Xen vs xl save + tar|zstd|ssh + xl restore (root)
bench-disk-xen: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab bench-disk-xen --runs 1

## bench-dhcp: perfdhcp (full DORA) against netmigrate, Kea (memfile, persist) and dnsmasq (root)
bench-dhcp: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab bench-dhcp

## bench-dns: dnsperf against netmigrate, dnsmasq and Knot serving the same 1,000-name zone (root)
bench-dns: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab bench-dns

## appliance-image: the gateway VM (Debian kernel + initramfs running netmigrate) in target/appliance-image
appliance-image: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab appliance-image --out target/appliance-image

## installer: the provisioning installer (Debian kernel, busybox + sshd initramfs) in target/installer
installer: deps
	sh provisioning/installer/build.sh target/installer $${NETMIGRATE_LAB_CACHE:-/var/cache/netmigrate-lab}/kernel/vmlinuz \
	  $${NETMIGRATE_LAB_CACHE:-/var/cache/netmigrate-lab}/kernel/root/lib/modules/$$(cat $${NETMIGRATE_LAB_CACHE:-/var/cache/netmigrate-lab}/kernel/version)

## bench-deploy: a bare machine to a Xen host running a VM, by netmigrate and by hand (dd over ssh) (root)
bench-deploy: deps
	$(CARGO) build --release --workspace
	NETMIGRATE_BIN=$(CURDIR)/target/release/netmigrate target/release/netmigrate-lab bench-deploy --runs 1

## host-image: deployable host images from Debian's packages, PROFILES (default: xen qemu), each
## into BOOT_DIR/images/PROFILE (default BOOT_DIR: target/boot; the appliance's is STATE_DIR/boot) (root)
BOOT_DIR ?= target/boot
PROFILES ?= xen qemu
host-image: deps
	for p in $(PROFILES); do bash provisioning/images/build.sh $$p $(BOOT_DIR)/images/$$p || exit 1; done

## fuzz: every fuzz target under libFuzzer, FUZZ_SECS each (default 300); FUZZ_TARGETS picks
FUZZ_SECS ?= 300
FUZZ_TARGETS ?= dhcp_answer config_parse api_request ftp_session
# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP lets the machine's stable toolchain take
# them. No sanitizer: the code is Rust, and a panic or a failed check is the crash looked for.
FUZZ = cd fuzz && for t in $(FUZZ_TARGETS); do mkdir -p corpus/$$t && \
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none $(1) $$t corpus/$$t $$([ -d seeds/$$t ] && echo seeds/$$t) \
	  -- -max_total_time=$(2) -timeout=20 2>&1 | grep -A4 -E '^Done|panicked|ERROR|SUMMARY|deadly signal' ; \
	[ $${PIPESTATUS[0]} = 0 ] || exit 1; done
fuzz: deps
	@$(call FUZZ,,$(FUZZ_SECS))

## fuzz-ci: the same unoptimised (a third of the build time) and 30 s each; part of `make test`
fuzz-ci: deps
	@$(call FUZZ,--dev,30)

## deny: cargo deny: licences, bans and sources; RustSec advisories when the database can be fetched
deny: deps
	$(CARGO) deny --log-level error check licenses bans sources
	@if $(CARGO) deny fetch db >/dev/null 2>&1; then $(CARGO) deny --log-level error check advisories; \
	else echo "SKIPPED: cargo deny advisories: the RustSec database (github.com) cannot be fetched from this machine"; fi

## cleanup: remove namespaces and run directories left by killed lab runs
cleanup:
	$(CARGO) build -p netmigrate-lab
	$(LAB_BIN) cleanup

clean:
	$(CARGO) clean
