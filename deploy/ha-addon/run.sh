#!/bin/sh
# Entry point of the mqtt-ha-gateway Home Assistant add-on.
#
# Reads the add-on options the Supervisor writes to /data/options.json and
# passes them to the gateway as MQTT_HA_GATEWAY_* environment variables (the
# gateway's config file is empty: /dev/null). Home Assistant is reached
# through the Supervisor's proxy, http://supervisor/core (the gateway appends
# /api/...), with the add-on's SUPERVISOR_TOKEN.
#
#   run.sh               start the gateway (the image's entry point)
#   run.sh --check       validate the resulting configuration and exit
#   run.sh --print-env   print the variables, secrets masked, and exit
#
# OPTIONS_FILE and GATEWAY_BIN replace /data/options.json and
# /usr/local/bin/mqtt-ha-gateway (scripts/check-deploy runs this script
# outside the container). POSIX sh and jq only.
set -eu

options=${OPTIONS_FILE:-/data/options.json}
gateway=${GATEWAY_BIN:-/usr/local/bin/mqtt-ha-gateway}

die() {
    echo "mqtt-ha-gateway add-on: $*" >&2
    exit 1
}

case "${1:-}" in
    "") mode=run ;;
    --check) mode=check ;;
    --print-env) mode=print ;;
    *) die "unknown argument: $1 (expected --check or --print-env)" ;;
esac

command -v jq >/dev/null 2>&1 || die "jq is not installed"
[ -r "$options" ] || die "cannot read $options"
jq -e 'type == "object"' "$options" >/dev/null 2>&1 || die "$options is not a JSON object"

# The option KEY as text: "" when absent or null, lists as JSON arrays, which
# the gateway reads like TOML arrays (["light.*","switch.*"]).
opt() {
    jq -r --arg k "$1" '.[$k] | if . == null then "" elif type == "array" or type == "object" then tojson else tostring end' "$options"
}

# Sets NAME to VALUE, or leaves it unset when VALUE is empty (the gateway's
# default applies).
set_env() {
    if [ -n "$2" ]; then
        export "$1=$2"
    else
        unset "$1"
    fi
}

if [ -z "${SUPERVISOR_TOKEN:-}" ] && [ "$mode" != print ]; then
    die "SUPERVISOR_TOKEN is not set: the add-on needs homeassistant_api: true"
fi

export MQTT_HA_GATEWAY_HOME_ASSISTANT__URL="http://supervisor/core"
# The Supervisor proxies HA's websocket API (the state mirror) at /core/websocket.
export MQTT_HA_GATEWAY_HOME_ASSISTANT__WEBSOCKET_URL="ws://supervisor/core/websocket"
set_env MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN "${SUPERVISOR_TOKEN:-}"
set_env MQTT_HA_GATEWAY_MQTT__URL "$(opt mqtt_url)"
set_env MQTT_HA_GATEWAY_MQTT__USERNAME "$(opt mqtt_username)"
set_env MQTT_HA_GATEWAY_MQTT__PASSWORD "$(opt mqtt_password)"
set_env MQTT_HA_GATEWAY_MQTT__TOPIC_PREFIX "$(opt topic_prefix)"
set_env MQTT_HA_GATEWAY_ACCESS__ALLOW_SERVICES "$(opt allow_services)"
set_env MQTT_HA_GATEWAY_QUEUE__RATE_PER_SECOND "$(opt rate_per_second)"
set_env MQTT_HA_GATEWAY_QUEUE__BURST "$(opt burst)"
set_env MQTT_HA_GATEWAY_QUEUE__CAPACITY "$(opt capacity)"
set_env MQTT_HA_GATEWAY_QUEUE__MAX_AGE "$(opt max_age)"
set_env MQTT_HA_GATEWAY_LOG__LEVEL "$(opt log_level)"
# All interfaces inside the add-on's container; published only if a host
# port is set on the add-on's Network tab.
export MQTT_HA_GATEWAY_METRICS__LISTEN="0.0.0.0:9184"

case "$mode" in
    print)
        env | grep '^MQTT_HA_GATEWAY_' | sort \
            | sed -e 's/^\(MQTT_HA_GATEWAY_[A-Z_]*TOKEN\)=.*/\1=***/' \
                  -e 's/^\(MQTT_HA_GATEWAY_[A-Z_]*PASSWORD\)=.*/\1=***/'
        ;;
    check)
        exec "$gateway" check --config /dev/null
        ;;
    run)
        echo "mqtt-ha-gateway add-on: broker $MQTT_HA_GATEWAY_MQTT__URL, topic prefix ${MQTT_HA_GATEWAY_MQTT__TOPIC_PREFIX:-ha-gateway}" >&2
        exec "$gateway" run --config /dev/null
        ;;
esac
