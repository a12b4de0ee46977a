#!/usr/bin/env bash
# asyncapi.sh install: installs the AsyncAPI parser (tests/asyncapi) into the
#   cache, keyed by the lock file, and prints the validator script's path.
# asyncapi.sh validate FILE|URL: validates an AsyncAPI document with it.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${QBO_CACHE:-/var/cache/qbo}
src=tests/asyncapi
key=$(cat "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" | sha256sum | cut -c1-16)
dir="$CACHE/asyncapi-$key"

install() {
	if [ ! -f "$dir/.complete" ]; then
		rm -rf "$dir" && mkdir -p "$dir"
		cp "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" "$dir/"
		(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
		touch "$dir/.complete"
	fi
	echo "$dir/validate.mjs"
}

case "${1:-}" in
install) install ;;
validate) node "$(install)" "$2" ;;
*) echo "usage: $0 install | validate FILE|URL" >&2; exit 2 ;;
esac
