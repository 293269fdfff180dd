#!/usr/bin/env bash
# cleanup.sh: release this Instruqt participant's sandbox back to
# sandbox-broker for deletion, at the end of the lab.
#
# Run it in a track's cleanup script, after any step that still needs the
# account (deleting lab users, say): the broker's cleanup job deletes the
# provider account soon after. It needs only bash, curl and sed, like
# setup.sh, and reads the subtenant_id.txt setup.sh wrote.
#
# Environment:
#   BROKER_API_URL           API base URL with its base path, e.g. https://broker.example.com/v1 (required)
#   BROKER_API_TOKEN         track token (required)
#   INSTRUQT_PARTICIPANT_ID  participant id, the sandbox's owner (required)
#   OUTPUT_DIR               where setup.sh wrote its files (default: the current directory)
#   BROKER_MAX_ATTEMPTS      attempts before giving up (default: 5)
#   BROKER_BACKOFF_MAX_SEC   longest wait between attempts, Retry-After included (default: 30)
#   BROKER_CONNECT_TIMEOUT   curl connect timeout in seconds (default: 5)
#   BROKER_REQUEST_TIMEOUT   curl timeout for the whole request in seconds (default: 15)
#
# Exit status: 0 when the sandbox is marked for deletion (200; repeating it is
# fine), was already cleaned up (404), or there is nothing to clean up
# (subtenant_id.txt missing or empty); 1 otherwise, printing the broker's
# error code and message (e.g. 403 NOT_SANDBOX_OWNER), after retrying
# timeouts, 429 and 5xx with exponential backoff honouring Retry-After.
set -euo pipefail

log() { printf 'cleanup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# json_string KEY FILE prints the string value of KEY in a flat JSON object
# (empty for null or a missing key), with \" \/ and \\ unescaped.
json_string() {
	sed -nE 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"(([^"\\]|\\.)*)".*/\1/p' "$2" | head -n 1 |
		sed -e 's/\\"/"/g' -e 's/\\\//\//g' -e 's/\\\\/\\/g'
}

# header NAME FILE prints the last value of a response header.
header() {
	tr -d '\r' <"$2" | grep -i "^$1:" | tail -n 1 | sed -E 's/^[^:]*:[[:space:]]*//' || true
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# backoff ATTEMPT HEADERS prints how long to wait before the next attempt:
# Retry-After when the broker sent one, else 2^ATTEMPT plus up to 1 s,
# both capped at BROKER_BACKOFF_MAX_SEC.
backoff() {
	local ra wait
	ra=$(header Retry-After "$2")
	if is_uint "$ra"; then
		wait=$ra
	else
		wait=$(((1 << $1) + RANDOM % 2))
	fi
	((wait > backoff_max)) && wait=$backoff_max
	printf '%d' "$wait"
}

# error_text BODY HEADERS describes an error answer: code, message, request id.
error_text() {
	local code message rid
	code=$(json_string code "$1")
	message=$(json_string message "$1")
	rid=$(json_string request_id "$1")
	[[ -n "$rid" ]] || rid=$(header X-Request-ID "$2")
	if [[ -n "$code" ]]; then
		printf '%s: %s (request id %s)' "$code" "$message" "${rid:-none}"
	else
		printf 'unexpected answer: %s' "$(head -c 200 "$1" | tr -s '[:space:]' ' ')"
	fi
}

out_dir=${OUTPUT_DIR:-.}
id_file="$out_dir/subtenant_id.txt"
if [[ ! -s "$id_file" ]]; then
	log "no $id_file: no sandbox was allocated here, nothing to clean up"
	exit 0
fi
sandbox_id=$(tr -d '[:space:]' <"$id_file")
if [[ -z "$sandbox_id" ]]; then
	log "$id_file is empty: nothing to clean up"
	exit 0
fi
[[ "$sandbox_id" =~ ^[A-Za-z0-9._~-]+$ ]] || die "$id_file holds an unexpected value '$sandbox_id'; expected a broker sandbox id"

url=${BROKER_API_URL:-}
token=${BROKER_API_TOKEN:-}
participant=${INSTRUQT_PARTICIPANT_ID:-}
max_attempts=${BROKER_MAX_ATTEMPTS:-5}
backoff_max=${BROKER_BACKOFF_MAX_SEC:-30}
connect_timeout=${BROKER_CONNECT_TIMEOUT:-5}
request_timeout=${BROKER_REQUEST_TIMEOUT:-15}

[[ -n "$url" ]] || die "BROKER_API_URL is not set (the broker's API base URL, e.g. https://broker.example.com/v1)"
[[ -n "$token" ]] || die "BROKER_API_TOKEN is not set (the broker's track token)"
[[ -n "$participant" ]] || die "INSTRUQT_PARTICIPANT_ID is not set"
for v in max_attempts backoff_max connect_timeout request_timeout; do
	is_uint "${!v}" || die "$v must be a whole number of seconds or attempts, got '${!v}'"
done
((max_attempts >= 1)) || die "BROKER_MAX_ATTEMPTS must be at least 1"
command -v curl >/dev/null || die "curl is required"
url=${url%/}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for ((attempt = 1; attempt <= max_attempts; attempt++)); do
	: >"$tmp/body"
	: >"$tmp/headers"
	status=$(curl -sS -X POST -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' \
		--connect-timeout "$connect_timeout" --max-time "$request_timeout" \
		-H "Authorization: Bearer $token" \
		-H "Content-Type: application/json" \
		-H "X-Instruqt-Sandbox-ID: $participant" \
		"$url/sandboxes/$sandbox_id/mark-for-deletion" 2>"$tmp/curl.err") || status=000
	case "$status" in
	200)
		log "sandbox $sandbox_id is marked for deletion; the broker deletes the account shortly"
		exit 0
		;;
	404)
		log "sandbox $sandbox_id is already cleaned up (the broker no longer knows it)"
		exit 0
		;;
	429 | 5??)
		wait=$(backoff "$attempt" "$tmp/headers")
		why="HTTP $status: $(error_text "$tmp/body" "$tmp/headers")"
		;;
	000)
		wait=$(backoff "$attempt" "$tmp/headers")
		why="no answer: $(tr -s '[:space:]' ' ' <"$tmp/curl.err" | sed 's/ *$//')"
		;;
	*)
		die "releasing sandbox $sandbox_id failed with HTTP $status: $(error_text "$tmp/body" "$tmp/headers")"
		;;
	esac
	((attempt < max_attempts)) || die "releasing sandbox $sandbox_id failed after $max_attempts attempts; last: $why"
	log "attempt $attempt/$max_attempts failed ($why); retrying in ${wait}s"
	sleep "$wait"
done
