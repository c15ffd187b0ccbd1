#!/usr/bin/env bash
# Checks the packages the way an administrator meets them (root; .ci/run calls it before
# the test suite): lintian on both, their contents, the unit against systemd-analyze, a
# real install of both packages together with apt, as the README says (user, directories,
# check-config, the installed binary serving and relaying one message, `sendmail` and
# `mailq` resolving to mailgate and a cron-style `echo hi | sendmail root` reaching the
# outbox), then a purge of both that leaves nothing behind.
# Installing mailgate-mta replaces the machine's MTA (postfix on CI, whose smtp-sink the
# tests use): whatever the install removed is installed again at the end, also when a
# check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
DEB=$(ls target/debian/mailgate_*.deb)
MTA=$(ls target/debian/mailgate-mta_*.deb)
[ "$(echo "$DEB" | wc -l)" = 1 ] && [ "$(echo "$MTA" | wc -l)" = 1 ] || { echo "build-debs.sh first (one package each): $DEB $MTA"; exit 1; }
VER=$(dpkg-deb -f "$DEB" Version)
[ "$(dpkg-deb -f "$MTA" Version)" = "$VER" ]
[ "$(dpkg-deb -f "$MTA" Depends)" = "mailgate (= $VER)" ] || { echo "mailgate-mta depends on $(dpkg-deb -f "$MTA" Depends), the package is $VER"; exit 1; }

installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }
installed > /tmp/mailgate-before.list
restore() {
  local gone
  gone=$(installed | comm -23 /tmp/mailgate-before.list -)
  if [ -n "$gone" ]; then
    echo "== installing again what the packages replaced:" $gone
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends --no-upgrade $gone >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends --no-upgrade $gone >/dev/null; }
  fi
}
trap restore EXIT

echo "== lintian"
# The tag that stays: the changelog closes no Debian bug (this is not a Debian upload).
# Warnings fail too: a manual page groff complains about is one.
lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$DEB" "$MTA"

echo "== contents"
dpkg-deb -c "$DEB" > /tmp/mailgate-deb.list
dpkg-deb -c "$MTA" > /tmp/mailgate-mta.list
awk '{print $6, $7, $8}' /tmp/mailgate-deb.list /tmp/mailgate-mta.list
for want in ./usr/bin/mailgate ./etc/mailgate/mailgate.toml ./usr/lib/systemd/system/mailgate.service ./usr/share/doc/mailgate/README.md ./usr/share/man/man8/mailgate.8.gz ./usr/share/man/man5/mailgate.toml.5.gz ./usr/share/doc/mailgate/examples/mailgate.rules.yml; do
  grep -q " $want\$" /tmp/mailgate-deb.list || { echo "missing from the package: $want"; exit 1; }
done
grep -q './usr/sbin/sendmail -> ../bin/mailgate' /tmp/mailgate-mta.list
grep -q './usr/bin/mailq -> mailgate' /tmp/mailgate-mta.list
[ "$(dpkg-deb -f "$MTA" Provides Conflicts Replaces | grep -c mail-transport-agent)" = 3 ]

echo "== install (both, with apt, as the README says)"
apt-get install -y -q --no-install-recommends "./$DEB" "./$MTA" >/dev/null
[ "$(readlink -f /usr/sbin/sendmail)" = /usr/bin/mailgate ]
[ "$(readlink -f /usr/bin/mailq)" = /usr/bin/mailgate ]
getent passwd mailgate >/dev/null
[ "$(stat -c %U /var/lib/mailgate)" = mailgate ]
[ -f /lib/systemd/system/mailgate.service ] || [ -f /usr/lib/systemd/system/mailgate.service ]
UNIT=$(ls /lib/systemd/system/mailgate.service /usr/lib/systemd/system/mailgate.service 2>/dev/null | head -1)
/usr/bin/mailgate --config /etc/mailgate/mailgate.toml check-config

echo "== systemd-analyze verify"
systemd-analyze verify "$UNIT"
score=$(systemd-analyze security --offline=yes "$UNIT" | tail -n 1)
echo "$score"
# The exposure score stays at or under 1.5.
echo "$score" | grep -Eq 'level for [^:]*: (0\.[0-9]|1\.[0-5]) ' || { echo "exposure above 1.5"; exit 1; }
grep -q '^MemoryMax=' "$UNIT"

echo "== secrets stored by root belong to the mailgate user (the daemon can read them)"
printf 's3cret\n' | /usr/bin/mailgate --config /etc/mailgate/mailgate.toml password set --provider outbox
for f in mailgate.key secrets.json secrets.lock; do
  [ "$(stat -c %U:%G /var/lib/mailgate/$f)" = mailgate:mailgate ] || { echo "$f: $(stat -c %U:%G /var/lib/mailgate/$f)"; exit 1; }
  [ "$(stat -c %a /var/lib/mailgate/$f)" = 600 ]
done
setpriv --reuid=mailgate --regid=mailgate --init-groups cat /var/lib/mailgate/secrets.json /var/lib/mailgate/mailgate.key >/dev/null
/usr/bin/mailgate --config /etc/mailgate/mailgate.toml password clear --provider outbox

echo "== the installed binary serves and relays one message"
# What the administrator does for cron's mail: name who reads root's.
sed -i 's|^# admin_address = .*|admin_address = "it@contoso.com"|' /etc/mailgate/mailgate.toml
grep -q '^admin_address = "it@contoso.com"' /etc/mailgate/mailgate.toml
cd /var/lib/mailgate
setpriv --reuid=mailgate --regid=mailgate --init-groups /usr/bin/mailgate --config /etc/mailgate/mailgate.toml serve 2>/tmp/mailgate-deb.log &
PID=$!
for _ in $(seq 100); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8525/healthz", timeout=1)' 2>/dev/null && break
  sleep 0.1
done
python3 - <<'PY'
import smtplib
from email.message import EmailMessage
m = EmailMessage(); m["From"] = "app@erp.local"; m["To"] = "someone@example.com"
m["Subject"] = "package check"; m.set_content("installed")
with smtplib.SMTP("127.0.0.1", 2525) as s:
    s.send_message(m)
PY
for _ in $(seq 100); do ls /var/lib/mailgate/outbox/*.eml >/dev/null 2>&1 && break; sleep 0.1; done
grep -l "package check" /var/lib/mailgate/outbox/*.eml
echo "== cron's way: echo hi | sendmail root, as root and as a user"
echo "hi from cron" | /usr/sbin/sendmail root
echo "Subject: from a user" | setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/sbin/sendmail root
for _ in $(seq 100); do
  grep -qs "hi from cron" /var/lib/mailgate/outbox/*.eml && grep -qs "Subject: from a user" /var/lib/mailgate/outbox/*.eml && break
  sleep 0.1
done
# Relayed to admin_address, and the line that is no header field is the body.
CRON=$(grep -l "hi from cron" /var/lib/mailgate/outbox/*.eml)
grep -q "for <it@contoso.com>" "$CRON"
grep -B1 "^hi from cron" "$CRON" | head -1 | grep -q $'^\r$' || { echo "no empty line before the body:"; cat "$CRON"; exit 1; }
grep -l "Subject: from a user" /var/lib/mailgate/outbox/*.eml
/usr/bin/mailq
echo "== the admin token: made by the daemon, read by root's commands"
[ "$(stat -c %U:%G:%a /var/lib/mailgate/admin.token)" = mailgate:mailgate:640 ]
/usr/bin/mailgate --config /etc/mailgate/mailgate.toml queue >/dev/null
python3 -c 'import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://127.0.0.1:8525/api/messages", timeout=2); raise SystemExit("the API answered without the token")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code'
kill -TERM "$PID"; wait "$PID"
cd /

echo "== purge (both)"
apt-get purge -y -q mailgate-mta mailgate >/dev/null
left=""
for p in /usr/bin/mailgate /usr/sbin/sendmail /usr/bin/mailq /etc/mailgate /var/lib/mailgate "$UNIT" /usr/share/doc/mailgate /usr/share/doc/mailgate-mta; do
  [ -e "$p" ] && left="$left $p"
done
getent passwd mailgate >/dev/null && left="$left user:mailgate"
if [ -n "$left" ]; then echo "left behind after purge:$left"; exit 1; fi
echo "packages: ok"
