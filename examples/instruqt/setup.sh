#!/usr/bin/env bash
# setup.sh: allocate this Instruqt participant's sandbox from sandbox-broker
# and write the files the rest of the lab setup reads.
#
# Run it in a track's setup script. It needs only bash, curl and sed (no jq,
# no python): the broker answers with flat, single-line JSON, which sed reads
# reliably. It is safe to run again: the broker gives the same participant the
# same sandbox (HTTP 200 instead of 201).
#
# Environment:
#   BROKER_API_URL           API base URL with its base path, e.g. https://broker.example.com/v1 (required)
#   BROKER_API_TOKEN         track token (required)
#   INSTRUQT_PARTICIPANT_ID  participant id, the sandbox's owner (required)
#   INSTRUQT_TRACK_SLUG      lab slug, for the broker's statistics (default: unknown-lab)
#   SANDBOX_NAME_PREFIX      allocate only a sandbox whose name starts with it (default: lab;
#                            set it empty to accept any sandbox)
#   BROKER_IDEMPOTENCY_KEY   Idempotency-Key (default: the participant id, on the broker); a new
#                            key gives the same participant a second sandbox
#   OUTPUT_DIR               where the files go (default: the current directory)
#   BROKER_JITTER_MAX_SEC    wait a random 1..N seconds first, to spread a class starting
#                            together (default: 5; 0 disables)
#   BROKER_MAX_ATTEMPTS      attempts before giving up (default: 5)
#   BROKER_BACKOFF_MAX_SEC   longest wait between attempts, Retry-After included (default: 30)
#   BROKER_WAF_WAIT_SEC      wait after a 403, which only a WAF sends on allocate (default: 10)
#   BROKER_CONNECT_TIMEOUT   curl connect timeout in seconds (default: 5)
#   BROKER_REQUEST_TIMEOUT   curl timeout for the whole request in seconds (default: 30)
#
# Files written to OUTPUT_DIR (no trailing newline):
#   subtenant_id.txt     broker sandbox id (cleanup.sh reads it)
#   external_id.txt      provider account UUID (the part of external_id after the last '/')
#   sandbox_id.txt       the same UUID
#   sandbox_name.txt     account name
#   sfdc_account_id.txt  Salesforce account id (empty when the broker has none)
#   sandbox_env.sh       exports STUDENT_TENANT (name), CSP_ACCOUNT_ID (UUID),
#                        BROKER_SANDBOX_ID (broker id), SFDC_ACCOUNT_ID
#
# Exit status: 0 allocated; 1 on any failure, with the reason on stderr:
# pool exhausted (409, not retried), refused (400/401/404), or still failing
# after BROKER_MAX_ATTEMPTS attempts (timeouts, 403, 429, 5xx; retried with
# exponential backoff honouring Retry-After).
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# json_string KEY FILE prints the string value of KEY in a flat JSON object
# (empty for null or a missing key), with \" \/ and \\ unescaped.
json_string() {
	sed -nE 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"(([^"\\]|\\.)*)".*/\1/p' "$2" | head -n 1 |
		sed -e 's/\\"/"/g' -e 's/\\\//\//g' -e 's/\\\\/\\/g'
}

# json_number KEY FILE prints the integer value of KEY, or nothing.
json_number() {
	sed -nE 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*(-?[0-9]+).*/\1/p' "$2" | head -n 1
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

# write_file NAME VALUE writes OUTPUT_DIR/NAME atomically, without a newline.
write_file() {
	printf '%s' "$2" >"$out_dir/.$1.tmp" && mv -f "$out_dir/.$1.tmp" "$out_dir/$1"
}

# shell_quote VALUE prints VALUE single-quoted for a shell.
shell_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

url=${BROKER_API_URL:-}
token=${BROKER_API_TOKEN:-}
participant=${INSTRUQT_PARTICIPANT_ID:-}
track=${INSTRUQT_TRACK_SLUG:-unknown-lab}
prefix=${SANDBOX_NAME_PREFIX-lab}
idem_key=${BROKER_IDEMPOTENCY_KEY:-}
out_dir=${OUTPUT_DIR:-.}
jitter_max=${BROKER_JITTER_MAX_SEC:-5}
max_attempts=${BROKER_MAX_ATTEMPTS:-5}
backoff_max=${BROKER_BACKOFF_MAX_SEC:-30}
waf_wait=${BROKER_WAF_WAIT_SEC:-10}
connect_timeout=${BROKER_CONNECT_TIMEOUT:-5}
request_timeout=${BROKER_REQUEST_TIMEOUT:-30}

[[ -n "$url" ]] || die "BROKER_API_URL is not set (the broker's API base URL, e.g. https://broker.example.com/v1)"
[[ -n "$token" ]] || die "BROKER_API_TOKEN is not set (the broker's track token)"
[[ -n "$participant" ]] || die "INSTRUQT_PARTICIPANT_ID is not set"
for v in jitter_max max_attempts backoff_max waf_wait connect_timeout request_timeout; do
	is_uint "${!v}" || die "$v must be a whole number of seconds or attempts, got '${!v}'"
done
((max_attempts >= 1)) || die "BROKER_MAX_ATTEMPTS must be at least 1"
command -v curl >/dev/null || die "curl is required"
mkdir -p "$out_dir" || die "cannot create OUTPUT_DIR $out_dir"
url=${url%/}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ((jitter_max > 0)); then
	delay=$((1 + RANDOM % jitter_max))
	log "waiting ${delay}s before allocating (spreads a class starting together)"
	sleep "$delay"
fi

args=(-sS -X POST -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}'
	--connect-timeout "$connect_timeout" --max-time "$request_timeout"
	-H "Authorization: Bearer $token"
	-H "Content-Type: application/json"
	-H "X-Instruqt-Sandbox-ID: $participant"
	-H "X-Instruqt-Track-ID: $track")
[[ -n "$prefix" ]] && args+=(-H "X-Sandbox-Name-Prefix: $prefix")
[[ -n "$idem_key" ]] && args+=(-H "Idempotency-Key: $idem_key")

status=""
for ((attempt = 1; attempt <= max_attempts; attempt++)); do
	: >"$tmp/body"
	: >"$tmp/headers"
	status=$(curl "${args[@]}" "$url/allocate" 2>"$tmp/curl.err") || status=000
	case "$status" in
	200 | 201)
		break
		;;
	409)
		die "no sandbox available for prefix '${prefix}' (pool exhausted): $(error_text "$tmp/body" "$tmp/headers"); ask the lab operators to add sandboxes"
		;;
	403)
		wait=$waf_wait
		why="HTTP 403 (a WAF block)"
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
		die "allocation refused with HTTP $status: $(error_text "$tmp/body" "$tmp/headers")"
		;;
	esac
	((attempt < max_attempts)) || die "allocation failed after $max_attempts attempts; last: $why"
	log "attempt $attempt/$max_attempts failed ($why); retrying in ${wait}s"
	sleep "$wait"
done

sandbox_id=$(json_string sandbox_id "$tmp/body")
external_id=$(json_string external_id "$tmp/body")
name=$(json_string name "$tmp/body")
sfdc=$(json_string sfdc_account_id "$tmp/body")
expires_at=$(json_number expires_at "$tmp/body")
[[ -n "$sandbox_id" ]] || die "the broker's answer has no sandbox_id: $(head -c 200 "$tmp/body")"
[[ -n "$external_id" ]] || die "the broker's answer has no external_id: $(head -c 200 "$tmp/body")"
uuid=${external_id##*/}

write_file subtenant_id.txt "$sandbox_id"
write_file external_id.txt "$uuid"
write_file sandbox_id.txt "$uuid"
write_file sandbox_name.txt "$name"
write_file sfdc_account_id.txt "$sfdc"
write_file sandbox_env.sh "$(
	printf 'export STUDENT_TENANT=%s\n' "$(shell_quote "$name")"
	printf 'export CSP_ACCOUNT_ID=%s\n' "$(shell_quote "$uuid")"
	printf 'export BROKER_SANDBOX_ID=%s\n' "$(shell_quote "$sandbox_id")"
	printf 'export SFDC_ACCOUNT_ID=%s\n' "$(shell_quote "$sfdc")"
)
"

expiry=""
if is_uint "${expires_at:-}"; then
	expiry=$(date -u -d "@$expires_at" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || date -u -r "$expires_at" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo "$expires_at")
fi
if [[ "$status" == 200 ]]; then
	log "participant $participant already holds sandbox $sandbox_id ($name); reusing it"
else
	log "allocated sandbox $sandbox_id ($name) to participant $participant"
fi
cat <<EOF
sandbox_id:      $sandbox_id
name:            $name
account uuid:    $uuid
sfdc account id: ${sfdc:-none}
expires:         ${expiry:-unknown}
files:           $out_dir/{subtenant_id,external_id,sandbox_id,sandbox_name,sfdc_account_id}.txt, $out_dir/sandbox_env.sh
To expose them to the lab, e.g.:
  agent variable set STUDENT_TENANT $(shell_quote "$name")
  agent variable set CSP_ACCOUNT_ID $(shell_quote "$uuid")
EOF
