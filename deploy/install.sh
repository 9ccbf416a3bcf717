#!/usr/bin/env bash
# Install edged from this checkout as a systemd service on Raspberry Pi OS (64-bit) or Debian,
# bookworm or trixie, arm64 or amd64. Run as root; running it again upgrades in place.
#
#   sudo deploy/install.sh [--tflite] [--no-start] [--device NAME]
#
# What it does (deploy/README.md has the details):
#   - checks the OS and architecture (--force goes on where they are not supported)
#   - installs python3-venv when Python's venv module is missing (apt-get)
#   - creates the groups plugdev and apex when missing, and the system user edged (no login
#     shell, home /var/lib/edged) in the groups video, plugdev and apex
#   - creates or updates the virtual environment /opt/edged/venv with edged from this checkout
#   - writes /etc/edged/edged.yaml (`edged config default` with this device's name) and
#     /etc/edged/edged.env (the service's environment, for secrets) only when they do not
#     exist: an existing configuration is never overwritten
#   - installs the Coral udev rules to /etc/udev/rules.d/ and reloads udev when it runs
#   - installs systemd/edged.service to /etc/systemd/system/, enables it, and starts it (or
#     restarts it, to run the new code) when systemd runs
#
# Options:
#   --root DIR     install under DIR instead of / (tests, images): no user or groups, no apt-get,
#                  no chown, no udevadm; the unit is enabled with `systemctl --root`, never started
#   --tflite       also install the `tflite` extra (tflite-runtime, numpy<2: the runtime the
#                  Coral stack is built against; no wheel for Python 3.13, so not on trixie)
#   --no-start     enable the unit but neither start nor restart it
#   --device NAME  the device name written to a new configuration (default: the host name)
#   --python PY    the Python that creates the venv (default: Debian's /usr/bin/python3; the user
#                  edged must be able to run it, so not one in root's home such as pyenv's)
#   --skip-venv    leave the venv alone (tests): the configuration is made with --python, or
#                  with the existing venv
#   --force        go on on an unsupported OS or architecture
#
# For tests: EDGED_OS_RELEASE (default /etc/os-release) and EDGED_DPKG_ARCH (default: dpkg's
# architecture) stand in for the system's.
set -euo pipefail
umask 022 # the venv must be readable by the service user whatever root's umask is

prog=install.sh
say() { printf '%s: %s\n' "$prog" "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root="" tflite=0 start=1 device="" py=/usr/bin/python3 skip_venv=0 force=0 py_given=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift ;;
    --root=*) root=${1#--root=} ;;
    --tflite) tflite=1 ;;
    --no-start) start=0 ;;
    --device) [ $# -ge 2 ] || die "--device needs a name"; device=$2; shift ;;
    --device=*) device=${1#--device=} ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; py=$2; py_given=1; shift ;;
    --python=*) py=${1#--python=}; py_given=1 ;;
    --skip-venv) skip_venv=1 ;;
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
  shift
done

if [ -n "$root" ]; then
  mkdir -p "$root" || die "cannot create --root directory $root"
  root=$(cd "$root" && pwd)
  [ "$root" = / ] && root=""
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0), or install into a directory with --root DIR"
fi

opt_dir=$root/opt/edged
venv=$opt_dir/venv
etc_dir=$root/etc/edged
config=$etc_dir/edged.yaml
env_file=$etc_dir/edged.env
state_dir=$root/var/lib/edged
udev_dir=$root/etc/udev/rules.d
udev_rules=60-edged-coral.rules
unit_dir=$root/etc/systemd/system
user=edged

tmp_paths=()
cleanup() { [ ${#tmp_paths[@]} -eq 0 ] || rm -rf "${tmp_paths[@]}"; }
trap cleanup EXIT

# --------------------------------------------------------------------------- platform

unsupported() {
  if [ "$force" = 1 ]; then
    warn "$1; going on because of --force"
  else
    die "$1 (--force to try anyway)"
  fi
}

check_platform() {
  local osr=${EDGED_OS_RELEASE:-/etc/os-release} id codename pretty arch name
  if [ ! -r "$osr" ]; then
    unsupported "cannot read $osr: supported are Debian and Raspberry Pi OS (64-bit), bookworm or trixie"
    return
  fi
  field() { sed -n "s/^$1=//p" "$osr" | head -n 1 | tr -d "\"'"; }
  id=$(field ID)
  codename=$(field VERSION_CODENAME)
  pretty=$(field PRETTY_NAME)
  arch=${EDGED_DPKG_ARCH:-$(dpkg --print-architecture 2>/dev/null || echo unknown)}
  name="Debian"
  if [ "$id" = raspbian ] || [ -e /etc/rpi-issue ]; then name="Raspberry Pi OS"; fi
  if [ "$id" = raspbian ] || [ "$arch" = armhf ] || [ "$arch" = armel ]; then
    unsupported "32-bit $name ($arch) is not supported: install the 64-bit $name (arm64)"
  elif [ "$id" != debian ]; then
    unsupported "${pretty:-$id} is not supported: Debian or Raspberry Pi OS (64-bit), bookworm or trixie"
  elif [ "$codename" != bookworm ] && [ "$codename" != trixie ]; then
    unsupported "$name ${codename:-of unknown release} is not supported: bookworm (12) or trixie (13)"
  elif [ "$arch" != amd64 ] && [ "$arch" != arm64 ]; then
    unsupported "architecture $arch is not supported: amd64 (x86-64) or arm64"
  else
    say "platform: $name $codename $arch"
  fi
}

check_platform

venv_support() { "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; }
if [ "$skip_venv" = 0 ] && [ -z "$root" ] && [ "$py_given" = 0 ] && ! venv_support; then
  say "installing python3-venv (Debian keeps Python's venv module in its own package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
command -v "$py" >/dev/null 2>&1 || die "$py not found: install python3 (3.11 or newer) or name one with --python"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "$py is $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unusable): edged needs 3.11 or newer"

if [ -z "$device" ]; then device=$(uname -n); fi
[[ "$device" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] ||
  die "device name '$device' is not usable in MQTT topics and labels: name one with --device NAME (letters, digits, . _ -)"

# --------------------------------------------------------------------------- user and groups

if [ -n "$root" ]; then
  say "skipped (--root): groups and the user $user"
else
  for g in plugdev apex; do
    if ! getent group "$g" >/dev/null; then
      groupadd --system "$g"
      say "created group $g (the udev rules give it the Coral devices)"
    fi
  done
  if getent passwd "$user" >/dev/null; then
    say "user $user exists"
  else
    useradd --system --user-group --home-dir /var/lib/edged --no-create-home \
      --shell /usr/sbin/nologin --comment "edged inference daemon" "$user"
    say "created system user $user"
  fi
  groups=()
  for g in video plugdev apex; do
    if getent group "$g" >/dev/null; then groups+=("$g"); fi
  done
  if [ ${#groups[@]} -gt 0 ]; then
    usermod --append --groups "$(IFS=,; echo "${groups[*]}")" "$user"
    say "user $user is in the groups ${groups[*]}"
  fi
fi

# /etc/edged: root's, readable by the group edged (the configuration may hold passwords)
if [ -n "$root" ]; then
  install -d -m 0750 "$state_dir" "$etc_dir"
else
  install -d -m 0750 -o "$user" -g "$user" "$state_dir"
  install -d -m 0750 -o root -g "$user" "$etc_dir"
fi
install -d -m 0755 "$opt_dir" "$udev_dir" "$unit_dir"

# --------------------------------------------------------------------------- virtual environment

if [ "$skip_venv" = 1 ]; then
  say "skipped (--skip-venv): the virtual environment $venv"
else
  venv_support || die "$py has no venv module: install python3-venv (apt-get install python3-venv)"
  venv_runs() { # as the service user when installing for real
    if [ -n "$root" ]; then "$venv/bin/python" -c ''; else runuser -u "$user" -- "$venv/bin/python" -c ''; fi
  } >/dev/null 2>&1
  if [ -e "$venv" ] && ! venv_runs; then
    say "recreating $venv: its Python does not run for the user $user (a system upgrade, or another Python?)"
    rm -rf "$venv"
  fi
  if [ ! -e "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
    say "created the virtual environment $venv"
  fi
  venv_runs || die "the user $user cannot run $venv/bin/python ($(readlink -f "$venv/bin/python")):" \
    "make the venv with a system Python (--python /usr/bin/python3)"
  # build from a copy: pip builds in the source tree, which must not get root-owned build files
  build=$(mktemp -d)
  tmp_paths+=("$build")
  tar -C "$src" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . |
    tar -C "$build" -xf -
  spec=$build
  if [ "$tflite" = 1 ]; then spec="${build}[tflite]"; fi
  what=edged
  if [ "$tflite" = 1 ]; then what="edged with the tflite extra"; fi
  say "installing $what into $venv (from PyPI: numpy, OpenCV, the TFLite runtime; minutes on a Pi)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location "$spec" ||
    die "pip could not install edged into $venv (see pip's message above)"
  say "installed $("$venv/bin/edged" --version 2>/dev/null || echo edged)"
fi

# --------------------------------------------------------------------------- configuration

if [ -e "$config" ]; then
  say "kept $config (an existing configuration is never overwritten)"
else
  if [ "$skip_venv" = 1 ] && [ "$py_given" = 0 ]; then
    [ -x "$venv/bin/python" ] || die "--skip-venv without --python needs an existing venv at $venv to write $config"
    edged_py=$venv/bin/python
  elif [ "$skip_venv" = 1 ]; then
    edged_py=$py
  else
    edged_py=$venv/bin/python
  fi
  new=$(mktemp "$etc_dir/.edged.yaml.XXXXXX")
  tmp_paths+=("$new")
  # from / : `python -m` would import a checkout in the working directory, not the venv's edged
  {
    echo "# edged configuration, written by deploy/install.sh from \`edged config default\`: the demo"
    echo "# (a synthetic scene and the bundled digits model). install.sh never overwrites this file."
    echo "# Put your streams here (docs/configuration.md), check the file with"
    echo "#   /opt/edged/venv/bin/edged config check /etc/edged/edged.yaml"
    echo "# and apply it with: systemctl reload edged"
    (cd / && "$edged_py" -m edged config default) | sed "s/^device: .*/device: '$device'/"
  } >"$new" || die "$edged_py -m edged config default failed"
  grep -q "^device: '$device'\$" "$new" || die "no top-level device: in \`edged config default\`'s output"
  out=$(cd / && "$edged_py" -m edged config check "$new" 2>&1) || die "the new configuration does not pass its check: $out"
  chmod 0640 "$new"
  [ -n "$root" ] || chgrp "$user" "$new"
  mv "$new" "$config"
  say "wrote $config (device: $device)"
fi

# the unit reads it (EnvironmentFile=-/etc/edged/edged.env): secrets kept out of edged.yaml
if [ ! -e "$env_file" ]; then
  new=$(mktemp "$etc_dir/.edged.env.XXXXXX")
  tmp_paths+=("$new")
  cat >"$new" <<'ENV'
# Environment of the edged service (systemd's EnvironmentFile=; VAR=value, one a line).
# Restart edged after a change: systemctl restart edged (a reload does not re-read it).
# The API token, required when listen: is not a loopback address (at least 16 characters):
#EDGED_API_TOKEN=
# A broker password named by an mqtt sink's password_env: EDGED_MQTT_PASSWORD
#EDGED_MQTT_PASSWORD=
ENV
  chmod 0640 "$new"
  [ -n "$root" ] || chgrp "$user" "$new"
  mv "$new" "$env_file"
  say "wrote $env_file (commented out: the API token, the MQTT password)"
fi

# --------------------------------------------------------------------------- udev rules

install -m 0644 "$src/deploy/udev/$udev_rules" "$udev_dir/$udev_rules"
say "installed $udev_dir/$udev_rules (Coral USB 1a6e:089a and 18d1:9302: group plugdev; /dev/apex_*: group apex)"
if [ -n "$root" ]; then
  say "skipped (--root): reloading udev"
elif command -v udevadm >/dev/null 2>&1 && udevadm control --ping >/dev/null 2>&1; then
  udevadm control --reload-rules
  udevadm trigger --subsystem-match=usb --subsystem-match=apex
  say "reloaded the udev rules"
else
  say "udev is not running here: the rules apply from the next boot (or replug the accelerator)"
fi

# --------------------------------------------------------------------------- systemd unit

install -m 0644 "$src/systemd/edged.service" "$unit_dir/edged.service"
say "installed $unit_dir/edged.service"
if ! command -v systemctl >/dev/null 2>&1; then
  say "systemctl not found: the unit is installed but not enabled"
elif [ -n "$root" ]; then
  systemctl --root="$root" enable edged.service >/dev/null 2>&1 || die "systemctl --root=$root enable edged.service failed"
  say "enabled edged.service under $root; not started (--root)"
elif [ ! -d /run/systemd/system ]; then
  systemctl enable edged.service >/dev/null 2>&1 || die "systemctl enable edged.service failed"
  say "enabled edged.service; systemd is not running here (a container or chroot?): edged starts at the next boot"
else
  systemctl daemon-reload
  systemctl enable --quiet edged.service
  if [ "$start" = 0 ]; then
    say "enabled edged.service; not started (--no-start): systemctl start edged"
  elif systemctl is-active --quiet edged.service; then
    systemctl restart edged.service || die "edged did not restart: journalctl -u edged -n 50"
    say "restarted edged (it runs the new installation)"
  else
    systemctl start edged.service || die "edged did not start: journalctl -u edged -n 50"
    say "started edged"
  fi
fi

if [ -z "$root" ] && ! { ldconfig -p 2>/dev/null | grep -q 'libedgetpu\.so\.1'; }; then
  say "note: libedgetpu.so.1 is not installed: edged runs on the CPU until the Coral runtime is (deploy/README.md)"
fi
say "done. Logs: journalctl -u edged -f; metrics: curl -s 127.0.0.1:9110/metrics; configuration: $config"
