#!/bin/sh
# h2k-guest boot probe. `h2k-guest validate --boot --probe` writes this script and a one-shot
# unit into a throw-away overlay of the image (never into the image itself); after
# multi-user.target it reports how the guest came up as ONE line on the serial console:
#   H2K-PROBE <bytes of the JSON> {"probe_version":1, ...}
# POSIX sh with coreutils, util-linux, iproute2 and systemd only (no jq, awk or python). Every
# check is best effort: a missing tool leaves its field empty and the script still exits 0.
# Environment (for tests on a host): H2K_PROBE_OUT=FILE writes the line there instead of
# /dev/ttyS0, H2K_PROBE_WAIT=S bounds the wait for `systemctl is-system-running` (90),
# H2K_PROBE_NET_WAIT=S the wait for an IPv4 address and a default route (30),
# H2K_PROBE_REPEAT=N how many times the line is written (5: a getty or systemd may cut through one),
# H2K_PROBE_GAP=S the pause between copies (2), H2K_PROBE_FSTAB=FILE the fstab to read.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL

out_file=${H2K_PROBE_OUT:-/dev/ttyS0}
wait_max=${H2K_PROBE_WAIT:-90}
net_wait_max=${H2K_PROBE_NET_WAIT:-30}
repeat=${H2K_PROBE_REPEAT:-5}
gap=${H2K_PROBE_GAP:-2}
fstab=${H2K_PROBE_FSTAB:-/etc/fstab}
missing=

have() {
    command -v "$1" >/dev/null 2>&1
}

for tool in systemctl ip findmnt mountpoint findfs blkid readlink od; do
    have "$tool" || missing="$missing $tool"
done

# A JSON string literal of $1: backslash, quote and control characters escaped; bytes from
# 0x80 up pass through (UTF-8 stays UTF-8).
jstr() {
    case $1 in
    *[!A-Za-z0-9_.:/@%+,=~\ -]*) ;;
    *)
        printf '"%s"' "$1"
        return
        ;;
    esac
    printf '"'
    printf '%s' "$1" | od -An -v -to1 | tr -s ' \n' '\n\n' | while read -r byte; do
        case $byte in
        '') ;;
        042) printf '\\"' ;;
        134) printf '\\\\' ;;
        011) printf '\\t' ;;
        012) printf '\\n' ;;
        015) printf '\\r' ;;
        00? | 01? | 02? | 03? | 177) printf '\\u%04x' $((0$byte)) ;;
        *) printf '%b' "\\0$byte" ;;
        esac
    done
    printf '"'
}

# Append the JSON value $2 to the comma-separated list in the variable named $1.
append() {
    eval "_cur=\${$1}"
    if [ -n "$_cur" ]; then
        eval "$1=\"\${_cur},\$2\""
    else
        eval "$1=\"\$2\""
    fi
}

# The real path of a device or file; UUID=, LABEL=, PARTUUID= and PARTLABEL= resolved.
resolve() {
    _r=
    case $1 in
    UUID=* | LABEL=* | PARTUUID=* | PARTLABEL=*)
        have findfs && _r=$(findfs "$1" 2>/dev/null)
        [ -n "$_r" ] || { have blkid && _r=$(blkid -l -o device -t "$1" 2>/dev/null); }
        ;;
    *) _r=$1 ;;
    esac
    if [ -n "$_r" ] && [ -e "$_r" ] && have readlink; then
        _r=$(readlink -f "$_r")
    fi
    printf '%s' "$_r"
}

# Whether something is mounted at $1 (as /etc/fstab spells it: /proc/mounts uses the same
# octal escapes).
is_mounted() {
    while read -r _dev _mp _rest; do
        [ "$_mp" = "$1" ] && return 0
    done </proc/mounts
    if have findmnt; then
        findmnt -rn --mountpoint "$1" >/dev/null 2>&1 && return 0
    fi
    have mountpoint && mountpoint -q "$1" 2>/dev/null
}

# {"via":…,"dev":…} of the first default route `ip -4|-6 route show default` prints, or null.
default_route() {
    _via=
    _dev=
    if have ip; then
        _line=$(ip "$1" route show default 2>/dev/null | head -n 1)
        _prev=
        for _w in $_line; do
            case $_prev in
            via) _via=$_w ;;
            dev) _dev=$_w ;;
            esac
            _prev=$_w
        done
    elif [ "$1" = -4 ] && [ -r /proc/net/route ]; then
        while read -r _if _dst _gw _rest; do
            [ "$_dst" = 00000000 ] || continue
            _dev=$_if
            case $_gw in
            [0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f])
                _rest=${_gw#??????}
                _b3=${_gw%??????}
                _t=${_gw#??}
                _b2=${_t%????}
                _t=${_gw#????}
                _b1=${_t%??}
                _via=$(printf '%d.%d.%d.%d' "0x$_rest" "0x$_b1" "0x$_b2" "0x$_b3")
                ;;
            esac
            break
        done </proc/net/route
    fi
    if [ -n "$_dev" ] || [ -n "$_via" ]; then
        printf '{"via":%s,"dev":%s}' "$(jstr "$_via")" "$(jstr "$_dev")"
    else
        printf 'null'
    fi
}

# Seconds (three decimals) from microseconds.
us_to_s() {
    printf '%d.%03d' $(($1 / 1000000)) $((($1 % 1000000) / 1000))
}

# --- multi-user.target and the system state -----------------------------------------------
mu_us=
if have systemctl; then
    mu_us=$(systemctl show -p ActiveEnterTimestampMonotonic multi-user.target 2>/dev/null)
    mu_us=${mu_us#*=}
fi
case $mu_us in '' | *[!0-9]*) mu_us= ;; esac
multi_user=false
multi_user_seconds=null
if [ -n "$mu_us" ] && [ "$mu_us" -gt 0 ]; then
    multi_user=true
    multi_user_seconds=$(us_to_s "$mu_us")
elif have systemctl && [ "$(systemctl is-active multi-user.target 2>/dev/null)" = active ]; then
    multi_user=true
fi

state=unknown
waited=0
if have systemctl; then
    while :; do
        state=$(systemctl is-system-running 2>/dev/null)
        [ -n "$state" ] || state=unknown
        case $state in initializing | starting) ;; *) break ;; esac
        [ "$waited" -ge "$wait_max" ] && break
        sleep 1
        waited=$((waited + 1))
    done
fi

# DHCP may still be running when multi-user.target is reached (networkd, NetworkManager).
net_waited=0
if have ip; then
    while [ "$net_waited" -lt "$net_wait_max" ]; do
        if [ -n "$(ip -4 -o addr show scope global 2>/dev/null)" ] &&
            [ -n "$(ip -4 route show default 2>/dev/null)" ]; then
            break
        fi
        sleep 1
        net_waited=$((net_waited + 1))
    done
fi

failed=
failed_names=
if have systemctl; then
    while read -r _a _b _rest; do
        # Older systemd prints a bullet before a failed unit's name even with --plain.
        case $_a in *.*) _u=$_a ;; *) _u=$_b ;; esac
        [ -n "$_u" ] && append failed "$(jstr "$_u")" && failed_names="$failed_names $_u"
    done <<EOF
$(systemctl list-units --state=failed --no-legend --plain --no-pager --full 2>/dev/null)
EOF
fi

# Why each failed unit failed: its last journal line (the first three failed units).
failed_logs=
if have journalctl; then
    _n=0
    for _u in $failed_names; do
        _n=$((_n + 1))
        [ "$_n" -le 3 ] || break
        # The line before systemd's own "Failed to start"/"Failed with result" says why.
        _log=$(journalctl -b -u "$_u" -n 8 -o cat --no-pager 2>/dev/null)
        _line=$(printf '%s\n' "$_log" | grep -v -e '^Failed to start' -e 'Failed with result' \
            -e 'Scheduled restart job' -e 'Start request repeated' -e '^Starting ' \
            -e '^Stopped ' 2>/dev/null | tail -n 1)
        [ -n "$_line" ] || _line=$(printf '%s\n' "$_log" | tail -n 1)
        append failed_logs "{\"unit\":$(jstr "$_u"),\"last_line\":$(jstr "$_line")}"
    done
fi

# --- /etc/fstab: mounts and swap -----------------------------------------------------------
mounts=
swaps=
if [ -r "$fstab" ]; then
    while read -r spec file vfstype opts _rest; do
        case $spec in '' | '#'*) continue ;; esac
        case ",$opts," in *,noauto,*) continue ;; esac
        if [ "$vfstype" = swap ]; then
            dev=$(resolve "$spec")
            active=false
            if [ -n "$dev" ] && [ -r /proc/swaps ]; then
                while read -r _sw _rest; do
                    [ "$_sw" = Filename ] && continue
                    _swr=$_sw
                    have readlink && [ -e "$_sw" ] && _swr=$(readlink -f "$_sw")
                    if [ "$_swr" = "$dev" ] || [ "$_sw" = "$dev" ]; then
                        active=true
                        break
                    fi
                done </proc/swaps
            fi
            append swaps "{\"spec\":$(jstr "$spec"),\"device\":$(jstr "$dev"),\"active\":$active}"
            continue
        fi
        case $file in none | '') continue ;; esac
        mounted=false
        is_mounted "$file" && mounted=true
        append mounts "{\"spec\":$(jstr "$spec"),\"mountpoint\":$(jstr "$file"),\"fstype\":$(jstr "$vfstype"),\"options\":$(jstr "$opts"),\"mounted\":$mounted}"
    done <"$fstab"
fi

active_swaps=
if [ -r /proc/swaps ]; then
    while read -r _sw _rest; do
        [ "$_sw" = Filename ] && continue
        [ -n "$_sw" ] && append active_swaps "$(jstr "$_sw")"
    done </proc/swaps
fi

# --- network ---------------------------------------------------------------------------------
ifaces=
for d in /sys/class/net/*; do
    [ -d "$d" ] || continue # not bonding_masters
    name=${d##*/}
    mac=$(cat "$d/address" 2>/dev/null)
    oper=$(cat "$d/operstate" 2>/dev/null)
    flags=$(cat "$d/flags" 2>/dev/null)
    admin_up=false
    case $flags in 0x*) [ $((flags & 1)) -eq 1 ] && admin_up=true ;; esac
    driver=
    [ -e "$d/device/driver" ] && have readlink && driver=$(readlink -f "$d/device/driver")
    driver=${driver##*/}
    v4=
    v6=
    if have ip; then
        while read -r _idx _ifname fam addr _rest; do
            case $fam in
            inet) append v4 "$(jstr "$addr")" ;;
            inet6) append v6 "$(jstr "$addr")" ;;
            esac
        done <<EOF
$(ip -o addr show dev "$name" 2>/dev/null)
EOF
    fi
    append ifaces "{\"name\":$(jstr "$name"),\"mac\":$(jstr "$mac"),\"operstate\":$(jstr "$oper"),\"admin_up\":$admin_up,\"driver\":$(jstr "$driver"),\"ipv4\":[$v4],\"ipv6\":[$v6]}"
done

route4=$(default_route -4)
route6=$(default_route -6)

# --- identity --------------------------------------------------------------------------------
cmdline=$(cat /proc/cmdline 2>/dev/null)
hostname=$(cat /proc/sys/kernel/hostname 2>/dev/null)
os=
if [ -r /etc/os-release ]; then
    while read -r _l; do
        case $_l in PRETTY_NAME=*) os=${_l#PRETTY_NAME=} ;; esac
    done </etc/os-release
    os=${os#[\"\']}
    os=${os%[\"\']}
fi
uptime=$(cat /proc/uptime 2>/dev/null)
uptime=${uptime%% *}
case $uptime in '' | *[!0-9.]*) uptime=null ;; esac

# The guest agent's unit (the host asks the agent itself on its virtio-serial port; this says
# why it may not answer): not-found, active, activating, inactive, failed, ...
agent_unit=
if have systemctl; then
    agent_unit=$(systemctl show -p LoadState --value qemu-guest-agent.service 2>/dev/null)
    [ "$agent_unit" = loaded ] &&
        agent_unit=$(systemctl show -p ActiveState --value qemu-guest-agent.service 2>/dev/null)
fi

tools=
for tool in $missing; do append tools "$(jstr "$tool")"; done

json="{\"probe_version\":1,\"multi_user\":$multi_user,\"multi_user_seconds\":$multi_user_seconds,\"uptime_seconds\":$uptime,\"system_state\":$(jstr "$state"),\"waited_seconds\":$waited,\"network_waited_seconds\":$net_waited,\"failed_units\":[$failed],\"failed_unit_logs\":[$failed_logs],\"mounts\":[$mounts],\"swaps\":[$swaps],\"active_swaps\":[$active_swaps],\"interfaces\":[$ifaces],\"default_route\":$route4,\"default_route6\":$route6,\"cmdline\":$(jstr "$cmdline"),\"hostname\":$(jstr "$hostname"),\"os\":$(jstr "$os"),\"agent_unit\":$(jstr "$agent_unit"),\"missing_tools\":[$tools]}"
# The byte count lets the reader reject a copy something cut into (LC_ALL=C: bytes).
line="H2K-PROBE ${#json} $json"

i=0
while [ "$i" -lt "$repeat" ]; do
    # A leading newline: the line must not continue a getty prompt.
    { printf '\n%s\n' "$line" >>"$out_file"; } 2>/dev/null ||
        { printf '\n%s\n' "$line" >/dev/console; } 2>/dev/null
    i=$((i + 1))
    [ "$i" -lt "$repeat" ] && sleep "$gap"
done
exit 0
