#!/usr/bin/env bash
# Builds the Debian package target/debian/parapet_<version>_<arch>.deb: the binary, the systemd
# unit (packaging/parapet.service), man pages and shell completions generated from the binary's
# own command-line definition, and the maintainer scripts in packaging/debian/.
#
#   scripts/package.sh                 release build, then the package
#   PARAPET_BIN=path scripts/package.sh   package an already built binary (the tests do this)
#   PARAPET_DEB_DIR=dir                where the .deb goes (default target/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in dpkg-deb dpkg gzip; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing; install it: apt-get install dpkg gzip" >&2; exit 1; }
done
bin=${PARAPET_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --bin parapet
    bin=target/release/parapet
fi
out=${PARAPET_DEB_DIR:-target/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

# Stripped, as Debian ships binaries.
install -D -s -m 0755 "$bin" "$root/usr/bin/parapet"
install -D -m 0644 packaging/parapet.service "$root/lib/systemd/system/parapet.service"
"$bin" man --dir "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$root/usr/share/bash-completion/completions/parapet"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_parapet"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/parapet.fish"
install -D -m 0644 README.md "$root/usr/share/doc/parapet/README.md"
for doc in docs/*.md; do
    install -m 0644 "$doc" "$root/usr/share/doc/parapet/"
done

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in >"$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/parapet_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
