# Shared by tests/ha/{install,start,stop,hatool,inroot}; sourced, not run.
# Defines the releases, the cache layout and the process helpers.
# shellcheck shell=bash

ha_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ha_cache_dir="${MQTT_HA_GATEWAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mqtt-ha-gateway}"
HA_RELEASES="2024.3 2026.2"
HA_DEFAULT_RELEASE=2024.3

# The Debian 13 root that runs the releases needing Python 3.13. Its cache key
# is a hash of these settings: change any of them and a new root is built.
ha_root_suite=trixie
ha_root_variant=minbase
ha_root_packages="python3.13,python3.13-venv,python3.13-dev,gcc,g++,libc6-dev,ca-certificates"
ha_root_format=1
ha_root_key=$(printf '%s\n' "$ha_root_format" "$ha_root_suite" "$ha_root_variant" "$ha_root_packages" \
    | sha256sum | cut -c1-12)
ha_root="$ha_cache_dir/debian-$ha_root_suite-$ha_root_key"
ha_root_marker="$ha_root/.mqtt-ha-gateway-root-complete"
# Inside the root (the same path seen from inside it).
ha_root_opt=/opt/mqtt-ha-gateway

ha_release_valid() {
    local r
    for r in $HA_RELEASES; do [[ "$1" == "$r" ]] && return 0; done
    return 1
}

# Releases that run inside the Debian 13 root.
ha_release_chrooted() { [[ "$1" == 2026.2 ]]; }

ha_lock_file() { echo "$ha_here/releases/$1/requirements.lock"; }
ha_lock_hash() { sha256sum "$(ha_lock_file "$1")" | cut -c1-12; }

# The venv of release $1: its path as seen from the host.
ha_venv_host() {
    if ha_release_chrooted "$1"; then
        echo "$ha_root$ha_root_opt/ha-venv-$(ha_lock_hash "$1")"
    else
        echo "$ha_cache_dir/ha-venv-$(ha_lock_hash "$1")"
    fi
}
# The venv as the hass process sees it (inside the root for chrooted releases).
ha_venv_inner() {
    if ha_release_chrooted "$1"; then
        echo "$ha_root_opt/ha-venv-$(ha_lock_hash "$1")"
    else
        ha_venv_host "$1"
    fi
}

# A process exists and is not a zombie.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ "${stat%% *}" != Z ]]
}

# PID $1 is a hass serving config dir $2 ($3, if given: chrooted into that root).
# The chrooted hass sees the state dir at the same path (tests/ha/inroot
# bind-mounts it there), so its command line holds the host path too.
is_our_hass() {
    local arg args=() found=1
    alive "$1" || return 1
    mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || return 1
    for arg in "${args[@]}"; do
        [[ "$arg" == "$2" ]] && found=0
    done
    ((found == 0)) || return 1
    [[ "${args[*]}" == *hass* ]] || return 1
    if [[ -n "${3:-}" ]]; then
        [[ "$(readlink "/proc/$1/root" 2>/dev/null)" == "$3" ]] || return 1
    else
        [[ "$(readlink "/proc/$1/root" 2>/dev/null)" == / ]] || return 1
    fi
    return 0
}
