#!/bin/sh
# Installs the Debian packages tuna needs to build and test, only when one is missing.
# Called by the Makefile (make deps); safe to run again. Needs root or sudo for apt-get.
set -e
PKGS="build-essential pkg-config libcjson-dev libyaml-dev libpcre2-dev libncurses-dev libedit-dev libopenblas-openmp-dev tmux
      clang libclang-rt-14-dev curl ca-certificates unzip golang-go libopenmpi-dev openmpi-bin
      iproute2"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends $missing >&2
