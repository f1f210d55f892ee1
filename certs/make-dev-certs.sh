#!/bin/sh
# Makes a development CA and a server certificate for 127.0.0.1, ::1 and
# localhost in DIR (default certs/dev). For testing and the demo only: never
# use these for anything real. Existing files are kept. The one recipe for a
# test CA: the demo, the tests (tests/gwtest.py) and the bench all use it.
# $OPENSSL names the openssl command (default: openssl).
set -eu
openssl=${OPENSSL:-openssl}
dir=${1:-certs/dev}
mkdir -p "$dir"
cd "$dir"
[ -f server.crt ] && [ -f server.key ] && [ -f ca.crt ] && exit 0
umask 077
"$openssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout ca.key -out ca.crt -days 365 -subj "/CN=gumloop-gateway dev CA" 2>/dev/null
"$openssl" req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost" \
	"basicConstraints=CA:FALSE" "extendedKeyUsage=serverAuth" >server.ext
"$openssl" x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
	-out server.crt -days 365 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
echo "made $dir/ca.crt, $dir/server.crt and $dir/server.key"
