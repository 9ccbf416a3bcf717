#!/usr/bin/env bash
# Remove what deploy/install.sh installed. Run as root; running it again is harmless.
#
#   sudo deploy/uninstall.sh [--purge]
#
# Removes: the service (stopped and disabled) and /etc/systemd/system/edged.service, the
# virtual environment (all of /opt/edged), the udev rules /etc/udev/rules.d/60-edged-coral.rules.
# Keeps, unless --purge: /etc/edged (configuration and environment), /var/lib/edged (state:
# the MQTT queues), drop-ins in /etc/systemd/system/edged.service.d/ and the user edged.
# The groups plugdev and apex stay: other software uses them.
#
# Options:
#   --purge     also remove the configuration, the state, the unit's drop-ins and the user edged
#   --root DIR  remove from under DIR instead of / (tests): no systemctl start/stop, no udevadm,
#               no userdel
set -euo pipefail

prog=uninstall.sh
say() { printf '%s: %s\n' "$prog" "$*"; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

root="" purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift ;;
    --root=*) root=${1#--root=} ;;
    --purge) purge=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
  shift
done

if [ -n "$root" ]; then
  [ -d "$root" ] || die "--root $root is not a directory"
  root=$(cd "$root" && pwd)
  [ "$root" = / ] && root=""
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0), or remove from a directory with --root DIR"
fi

unit=$root/etc/systemd/system/edged.service
dropins=$root/etc/systemd/system/edged.service.d
rules=$root/etc/udev/rules.d/60-edged-coral.rules
user=edged
systemd_running=0
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemd_running=1; fi

remove() { # remove PATH WHAT
  if [ -e "$1" ] || [ -L "$1" ]; then
    rm -rf -- "$1"
    say "removed $2 ($1)"
  else
    say "no $2 to remove ($1)"
  fi
}

if [ -e "$unit" ]; then
  if [ "$systemd_running" = 1 ]; then
    systemctl disable --now --quiet edged.service || die "could not stop and disable edged.service"
    say "stopped and disabled edged.service"
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl ${root:+--root="$root"} disable edged.service >/dev/null 2>&1 || die "systemctl disable edged.service failed"
    say "disabled edged.service"
  fi
fi
remove "$unit" "unit"
# a leftover symlink, from an enable without systemctl's help
rm -f -- "$root/etc/systemd/system/multi-user.target.wants/edged.service"
if [ "$purge" = 1 ]; then
  remove "$dropins" "unit drop-ins"
elif [ -d "$dropins" ]; then
  say "kept $dropins (--purge removes it)"
fi
if [ "$systemd_running" = 1 ]; then systemctl daemon-reload; fi

remove "$root/opt/edged" "virtual environment"

remove "$rules" "udev rules"
if [ -z "$root" ] && command -v udevadm >/dev/null 2>&1 && udevadm control --ping >/dev/null 2>&1; then
  udevadm control --reload-rules
fi

if [ "$purge" = 1 ]; then
  remove "$root/etc/edged" "configuration"
  remove "$root/var/lib/edged" "state"
  if [ -n "$root" ]; then
    say "skipped (--root): the user $user"
  elif getent passwd "$user" >/dev/null; then
    userdel "$user"
    say "removed the user $user"
  else
    say "no user $user to remove"
  fi
else
  say "kept the configuration ($root/etc/edged), the state ($root/var/lib/edged) and the user $user: --purge removes them"
fi
