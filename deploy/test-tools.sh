#!/usr/bin/env bash
# The Debian programs the tests run, installed once (only what is missing), as `bootstrap.sh test`
# does before the tests: a C compiler (the stand-in Edge TPU delegate), Mosquitto (the MQTT tests),
# Chromium (the live page), shellcheck (the deploy scripts), Prometheus' promtool (the alert rules),
# GStreamer's RTSP server for Debian's python3 (the RTSP camera), and debootstrap with QEMU (the
# Debian guests of the `vm` tests, amd64 and arm64, booted in software emulation). As root (or with sudo that
# asks no password) it installs them; otherwise it names them and the tests that need them skip.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-system-aarch64 >/dev/null 2>&1 || need+=(qemu-system-arm)  # the arm64 guest, with:
command -v cpio >/dev/null 2>&1 || need+=(cpio)                             # its initramfs
command -v depmod >/dev/null 2>&1 || [ -x /usr/sbin/depmod ] || need+=(kmod) # its modules' index
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# the RTSP server: each part named, so that a python3-gi without the RTSP typelib is completed too
if ! /usr/bin/python3 -c 'import gi' >/dev/null 2>&1; then
  need+=(python3-gi)
fi
if ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
  >/dev/null 2>&1; then
  need+=(gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  run=(sudo)
else
  echo "bootstrap: the system tests need Debian packages that are not installed: ${need[*]}" >&2
  echo "bootstrap: install them with: sudo apt-get install ${need[*]} (the tests that need them skip meanwhile)" >&2
  exit 0
fi
echo "bootstrap: installing the Debian packages the tests need: ${need[*]}" >&2
"${run[@]}" apt-get update -qq
"${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
