#!/usr/bin/env bash
# Installs the build host's tools on Debian 12 (bookworm). Idempotent: when everything is
# already present it only checks and exits, without touching apt.
set -euo pipefail

# mkosi 24.x and the systemd it needs (>= 254) come from bookworm-backports; bookworm's own
# mkosi 14 is too old for systemd-repart based disk images with grub for BIOS and UEFI.
# udev must match backports' systemd, or virt-v2v's dependencies cannot be installed.
# e2fsprogs >= 1.47.1: bookworm's 1.47.0 copies the build tree's ctimes into ext4 (mkfs.ext4 -d),
# so no two image builds were the same (docs/reproducible-builds.md).
BACKPORTS_PKGS=(mkosi systemd systemd-container udev e2fsprogs)
E2FSPROGS_MIN=1.47.1
PKGS=(
  bubblewrap apt dpkg debian-archive-keyring          # mkosi's Debian backend
  dosfstools mtools                                   # systemd-repart: the ESP (ext4: backports)
  grub-common grub-pc-bin grub-efi-amd64-bin          # grub-mkimage and grub-bios-setup (hybrid boot)
  zstd xz-utils cpio                                  # initrd and compression
  qemu-utils qemu-system-x86 ovmf                     # qcow2 conversion and smoke boots
  xorriso                                             # OVF environment ISO (ISO transport)
  rauc squashfs-tools openssl                         # signed update bundles (verity format) and signatures
  tinyproxy nginx-light openssh-server openssh-client wrk curl # proxy tests; relay benchmark peers and load
  tmux                                                # wizard tests in a real terminal
  socat                                               # QEMU guest forwards to host loopback ports
  virt-v2v nbdkit libnbd-bin linux-image-amd64        # the OVA's KVM import test (libguestfs boots a kernel)
  nftables                                            # nft checks the appliance's rule sets (in a netns)
  golang-go golang-github-vmware-govmomi-dev golang-github-kr-pretty-dev  # vcsim and govc (scripts/build-tools.sh)
  python3-keystone                                    # a real Keystone for openstacksdk through the relay
  faketime                                            # a gateway with a skewed clock (libfaketime)
  fdisk                                               # sfdisk: the disk layout (appliance build, bench/shipped.py)
  # The C accelerators, compiled for the venv (scripts/build-accel.sh). python3-dev covers Debian's
  # python3 (pyenv's has its own headers); it pulls libexpat1-dev too, listed as the module links it.
  gcc libc6-dev python3-dev libexpat1-dev
)

die() { echo "setup: $*" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}" "${BACKPORTS_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
mkosi_ok=0
if command -v mkosi >/dev/null && mkosi --version 2>/dev/null | grep -Eq 'mkosi (2[4-9]|[3-9][0-9])'; then
  mkosi_ok=1
fi

e2fs_version=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || true)
if [ -n "$e2fs_version" ] && ! dpkg --compare-versions "$e2fs_version" ge "$E2FSPROGS_MIN"; then
  missing+=("e2fsprogs>=$E2FSPROGS_MIN")
fi

if [ ${#missing[@]} -eq 0 ] && [ $mkosi_ok -eq 1 ]; then
  exit 0
fi

[ -r /etc/debian_version ] || die "not a Debian machine; install by hand: ${missing[*]:-mkosi>=24}"
[ "$(id -u)" -eq 0 ] || die "must run as root to install: ${missing[*]:-mkosi>=24} (or run 'sudo make setup')"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ "$codename" = bookworm ] || echo "setup: warning: tested on Debian 12 (bookworm), this is '$codename'" >&2

if [ "$codename" = bookworm ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "setup: adding bookworm-backports to apt sources"
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup: installing: ${missing[*]:-mkosi}"
apt-get update -qq || die "apt-get update failed; is the Debian mirror reachable?"
apt-get install -y -qq --no-install-recommends -t bookworm-backports "${BACKPORTS_PKGS[@]}" >/dev/null \
  || die "could not install ${BACKPORTS_PKGS[*]} from bookworm-backports"
apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null \
  || die "could not install: ${PKGS[*]}"
# The test and benchmark peers are started on demand on loopback, never as system services.
for svc in tinyproxy nginx ssh; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
mkosi --version | grep -Eq 'mkosi (2[4-9]|[3-9][0-9])' || die "mkosi >= 24 is required, found: $(mkosi --version)"
echo "setup: host tools ready ($(mkosi --version))"
