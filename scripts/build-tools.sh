#!/usr/bin/env bash
# Builds VMware's vCenter simulator (vcsim) and govc into .tools/bin for the SDK integration tests.
#
# Both come from Debian's govmomi source package (bookworm: 0.24.2), built with Debian's Go in
# GOPATH mode against the Go libraries Debian packages in /usr/share/gocode: no Go module proxy,
# nothing from outside Debian's archive. The binary package golang-github-vmware-govmomi-dev
# ships the simulator library but neither command, so the source package is fetched with
# `apt-get source` through a private deb-src list (the system's apt configuration is untouched).
# Idempotent: a stamp naming the source version skips the work (about 30 s when it runs).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools
BIN=$TOOLS/bin
SRC_PKG=golang-github-vmware-govmomi
die() { echo "build-tools: $*" >&2; exit 1; }

if [ -x "$BIN/vcsim" ] && [ -x "$BIN/govc" ] && compgen -G "$BIN/.built-*" >/dev/null; then
  exit 0
fi
command -v go >/dev/null || die "go not found (Debian package golang-go; run scripts/setup-host.sh as root)"
[ -d /usr/share/gocode/src/github.com/google/uuid ] \
  || die "Go libraries missing (Debian packages golang-github-vmware-govmomi-dev golang-github-kr-pretty-dev)"

apt_dir=$(realpath -m "$TOOLS/apt")
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$BIN"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main" \
  > "$apt_dir/sources.list"
APT=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
echo "build-tools: fetching Debian's $SRC_PKG source"
apt-get "${APT[@]}" -qq update || die "apt-get update of the deb-src list failed; is the Debian mirror reachable?"
(cd "$apt_dir" && rm -f ./*.orig.tar.* ./*.dsc ./*.debian.tar.* \
  && apt-get "${APT[@]}" -qq source --download-only "$SRC_PKG" >/dev/null) \
  || die "apt-get source $SRC_PKG failed"
orig=$(ls "$apt_dir"/"${SRC_PKG}"_*.orig.tar.* | head -n1)
version=$(basename "$orig" | sed -E "s/^${SRC_PKG}_([^.]+\.[^.]+\.[^.]+)\.orig.*/\1/")

gopath=$(realpath -m "$TOOLS/gopath")
rm -rf "$gopath/src/github.com/vmware"
mkdir -p "$gopath/src/github.com/vmware"
tar -xf "$orig" -C "$gopath/src/github.com/vmware"
mv "$gopath/src/github.com/vmware/govmomi-$version" "$gopath/src/github.com/vmware/govmomi"

echo "build-tools: building vcsim and govc $version (Go $(go env GOVERSION), GOPATH mode)"
export GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE=$(realpath -m "$TOOLS/go-cache")
for cmd in vcsim govc; do
  go build -trimpath -ldflags="-s -w" -o "$BIN/$cmd" "github.com/vmware/govmomi/$cmd" \
    || die "go build of $cmd failed"
done
rm -f "$BIN"/.built-*
touch "$BIN/.built-$version"
echo "build-tools: $BIN/vcsim and $BIN/govc ($version) ready"
