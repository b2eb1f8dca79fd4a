#!/usr/bin/env bash
# Generates a development CA and a serving certificate for the webhook (ECDSA P-256), for
# `make run` and the README's curl. Keys stay in certs/ and are gitignored. Production
# installs use the chart's certificate modes instead.
#
#   certs/generate.sh [DIR]      (default: the directory of this script)
# Existing files are kept; delete them to regenerate.
set -euo pipefail

dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
command -v openssl >/dev/null 2>&1 || {
    echo "certs: openssl not found: install it (Debian/Ubuntu: apt-get install openssl)" >&2
    exit 1
}
if [[ -f "$dir/tls.crt" && -f "$dir/tls.key" && -f "$dir/ca.crt" ]]; then
    echo "certs: $dir/tls.crt exists; keeping it"
    exit 0
fi
mkdir -p "$dir"
umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 365 \
    -subj "/CN=pullsecret-injector dev CA" -out "$tmp/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/tls.ec.key"
# rustls wants PKCS#8 or SEC1; PKCS#8 is what Kubernetes tooling writes.
openssl pkcs8 -topk8 -nocrypt -in "$tmp/tls.ec.key" -out "$tmp/tls.key"
openssl req -new -key "$tmp/tls.key" -subj "/CN=pullsecret-injector" -out "$tmp/tls.csr" 2>/dev/null
cat >"$tmp/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:pullsecret-injector,DNS:pullsecret-injector.pullsecret-injector.svc
EXT
openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 90 -sha256 -extfile "$tmp/ext.cnf" -out "$tmp/tls.crt" 2>/dev/null

install -m 0644 "$tmp/ca.crt" "$dir/ca.crt"
install -m 0600 "$tmp/ca.key" "$dir/ca.key"
install -m 0644 "$tmp/tls.crt" "$dir/tls.crt"
install -m 0600 "$tmp/tls.key" "$dir/tls.key"
echo "certs: wrote $dir/ca.crt, $dir/tls.crt and $dir/tls.key (valid 90 days, localhost and 127.0.0.1)"
