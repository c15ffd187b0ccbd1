#!/usr/bin/env bash
# Builds the two Debian packages into target/debian/:
#   mailgate      (cargo-deb): the binary, the systemd unit, /etc/mailgate/mailgate.toml
#                 (the shipped config with its store and outbox under /var/lib/mailgate),
#                 the README, the manual pages mailgate(8) and mailgate.toml(5), the
#                 mailgate system user;
#   mailgate-mta  (dpkg-deb): only /usr/sbin/sendmail and /usr/bin/mailq as links to
#                 /usr/bin/mailgate, providing mail-transport-agent (as msmtp-mta does).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/packaging target/debian
rm -f target/debian/*.deb
sed -e 's#^path = "data/mailgate.redb"#path = "/var/lib/mailgate/mailgate.redb"#' \
    -e 's#^directory = "outbox"#directory = "/var/lib/mailgate/outbox"#' \
    config/mailgate.toml > target/packaging/mailgate.toml
grep -q '^path = "/var/lib/mailgate/mailgate.redb"' target/packaging/mailgate.toml
# The manual pages: mailgate(8) from the binary's own flags, mailgate.toml(5) as written.
cargo build --release --locked --quiet
target/release/mailgate manpage 8 | gzip -9n > target/packaging/mailgate.8.gz
gzip -9n < packaging/man/mailgate.toml.5 > target/packaging/mailgate.toml.5.gz
DEB=$(cargo deb --locked --quiet --no-build | tail -n 1)
# The version cargo-deb gave the package (it adds a Debian revision, `-1`): mailgate-mta
# carries the same one and depends on exactly it, so the two install together.
VER=$(dpkg-deb -f "$DEB" Version)
ARCH=$(dpkg --print-architecture)

MTA=target/packaging/mailgate-mta
rm -rf "$MTA"
mkdir -p "$MTA/DEBIAN" "$MTA/usr/sbin" "$MTA/usr/bin" "$MTA/usr/share/doc/mailgate-mta" \
  "$MTA/usr/share/man/man8" "$MTA/usr/share/man/man1"
ln -s ../bin/mailgate "$MTA/usr/sbin/sendmail"
ln -s mailgate "$MTA/usr/bin/mailq"
# sendmail(8) and mailq(1) are mailgate(8), which says how it behaves under those names.
ln -s mailgate.8.gz "$MTA/usr/share/man/man8/sendmail.8.gz"
ln -s ../man8/mailgate.8.gz "$MTA/usr/share/man/man1/mailq.1.gz"
cp packaging/mta/copyright "$MTA/usr/share/doc/mailgate-mta/copyright"
gzip -9n < packaging/mta/changelog > "$MTA/usr/share/doc/mailgate-mta/changelog.Debian.gz"
cat > "$MTA/DEBIAN/control" <<CONTROL
Package: mailgate-mta
Version: $VER
Architecture: $ARCH
Maintainer: mailgate developers <mailgate-dev@example.org>
Depends: mailgate (= $VER)
Provides: mail-transport-agent
Conflicts: mail-transport-agent
Replaces: mail-transport-agent
Section: mail
Priority: optional
Description: mailgate as the system's sendmail
 Links /usr/sbin/sendmail and /usr/bin/mailq to mailgate, so cron, PHP's mail(),
 mailx and other software that runs sendmail hand their mail to mailgate.
CONTROL
chmod -R go-w "$MTA"
dpkg-deb --root-owner-group --build "$MTA" "target/debian/mailgate-mta_${VER}_${ARCH}.deb" >/dev/null
ls target/debian/*.deb
