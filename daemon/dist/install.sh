#!/bin/sh
# Install vpud: binaries, systemd unit, D-Bus policy and activation file, polkit action,
# introspection XML, sysusers.d entry, udev rules and the example configuration.
#
#   daemon/dist/install.sh [--prefix DIR] [--sysconfdir DIR] [--destdir DIR] [--from DIR]
#                          [--no-reload]
#
# Build first: cargo build --release -p vpud -p vpuctl
#
# --prefix DIR      binaries go to DIR/bin, documentation to DIR/share/doc/vpud; the unit and
#                   the activation file run DIR/bin/vpud (default /usr)
# --sysconfdir DIR  the example configuration goes to DIR/vpud/vpud.toml unless a file is
#                   already there (default /etc)
# --destdir DIR     stage everything under DIR, for packaging (default $DESTDIR, else none)
# --from DIR        where the built vpud and vpuctl are (default $CARGO_TARGET_DIR/release,
#                   else target/release of this workspace)
# --no-reload       do not create the users or reload systemd, udev and D-Bus afterwards
#                   (never done when staging into a DESTDIR)
#
# Files read by systemd, udev, D-Bus and polkit go where those read them, whatever the
# prefix: /usr/lib/systemd/system, /usr/lib/udev/rules.d, /usr/lib/sysusers.d,
# /usr/share/dbus-1/{system.d,system-services,interfaces}, /usr/share/polkit-1/actions.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
workspace=$(cd "$here/../.." && pwd)

prefix=/usr
sysconfdir=/etc
destdir=${DESTDIR:-}
from=${CARGO_TARGET_DIR:-$workspace/target}/release
reload=yes

usage() {
    sed -n '2,20s/^# \{0,1\}//p' "$0"
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

need_arg() {
    [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --sysconfdir) need_arg "$@"; sysconfdir=$2; shift 2 ;;
        --sysconfdir=*) sysconfdir=${1#*=}; shift ;;
        --destdir) need_arg "$@"; destdir=$2; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --from) need_arg "$@"; from=$2; shift 2 ;;
        --from=*) from=${1#*=}; shift ;;
        --no-reload) reload=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case $prefix in /*) ;; *) die "--prefix must be an absolute path, not '$prefix'" ;; esac
case $sysconfdir in /*) ;; *) die "--sysconfdir must be an absolute path, not '$sysconfdir'" ;; esac
if [ -n "$destdir" ]; then
    case $destdir in /*) ;; *) destdir=$(pwd)/$destdir ;; esac
    reload=no
fi

for bin in vpud vpuctl; do
    [ -x "$from/$bin" ] || die "$from/$bin not found: build it with 'cargo build --release -p vpud -p vpuctl', or point --from at the directory holding it"
done
for file in vpud.service org.vpud.Vpud1.service org.vpud.Vpud1.conf org.vpud.Vpud1.xml \
    org.vpud.Vpud1.policy vpud.sysusers vpud.toml vpud-grafana.json ../../udev/70-vpud.rules \
    ../../docs/operations.md; do
    [ -f "$here/$file" ] || die "$here/$file is missing: is this a complete source tree?"
done

bindir=$prefix/bin
docdir=$prefix/share/doc/vpud
unitdir=/usr/lib/systemd/system
udevrulesdir=/usr/lib/udev/rules.d
sysusersdir=/usr/lib/sysusers.d
dbusdir=/usr/share/dbus-1
polkitdir=/usr/share/polkit-1/actions

# put MODE SOURCE TARGET: install one file under $destdir.
put() {
    install -D -m "$1" "$2" "$destdir$3"
    echo "installed $destdir$3"
}

# put_exec_path SOURCE TARGET: install a text file with /usr/bin/vpud replaced by the
# installed binary's path.
put_exec_path() {
    tmp=$(mktemp)
    sed "s|/usr/bin/vpud|$bindir/vpud|g" "$1" > "$tmp"
    install -D -m 0644 "$tmp" "$destdir$2"
    rm -f "$tmp"
    echo "installed $destdir$2"
}

put 0755 "$from/vpud" "$bindir/vpud"
put 0755 "$from/vpuctl" "$bindir/vpuctl"
put_exec_path "$here/vpud.service" "$unitdir/vpud.service"
put_exec_path "$here/org.vpud.Vpud1.service" "$dbusdir/system-services/org.vpud.Vpud1.service"
put 0644 "$here/org.vpud.Vpud1.conf" "$dbusdir/system.d/org.vpud.Vpud1.conf"
put 0644 "$here/org.vpud.Vpud1.xml" "$dbusdir/interfaces/org.vpud.Vpud1.xml"
put 0644 "$here/org.vpud.Vpud1.policy" "$polkitdir/org.vpud.Vpud1.policy"
put 0644 "$here/vpud.sysusers" "$sysusersdir/vpud.conf"
put 0644 "$workspace/udev/70-vpud.rules" "$udevrulesdir/70-vpud.rules"
put 0644 "$here/vpud.toml" "$docdir/vpud.toml.example"
put 0644 "$workspace/docs/operations.md" "$docdir/operations.md"
put 0644 "$here/vpud-grafana.json" "$docdir/vpud-grafana.json"
if [ -e "$destdir$sysconfdir/vpud/vpud.toml" ]; then
    echo "kept $destdir$sysconfdir/vpud/vpud.toml (example: $docdir/vpud.toml.example)"
else
    put 0644 "$here/vpud.toml" "$sysconfdir/vpud/vpud.toml"
fi

if [ "$reload" = yes ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: skipped creating users and reloading systemd, udev and D-Bus" >&2
        exit 0
    fi
    systemd-sysusers "$sysusersdir/vpud.conf"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    if udevadm control --reload 2>/dev/null; then
        echo "udev rules reloaded; bind present cards with:"
        echo "  udevadm trigger --action=add --subsystem-match=pci --attr-match=vendor=0x1ded"
    fi
    if [ -S /run/dbus/system_bus_socket ]; then
        dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
            org.freedesktop.DBus.ReloadConfig > /dev/null
        echo "D-Bus configuration reloaded"
    fi
    echo "enable and start vpud with: systemctl enable --now vpud"
fi
