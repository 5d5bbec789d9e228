#!/bin/sh
# test_mpi_netns.sh: data parallel across two "hosts": two network namespaces joined by a veth
# pair (10.X.Y.1/24 and 10.X.Y.2/24), one rank in each, Open MPI's TCP transport between them
# (btl tcp,self: no shared memory) and its out-of-band channel restricted to those addresses.
# mpirun runs in the first namespace with a hostfile naming the two addresses; the second host
# is "reached" through --mca plm_rsh_agent, a tiny script that runs the command with
# `ip netns exec` where ssh would log in. On models/stories260K, 20 steps of LoRA and of full
# fine-tuning at 2 hosts x 2 rows give one process's losses at 4 rows (within 1e-5 relative);
# the veth byte counters, printed before and after, show the traffic went between the hosts.
# Sets up and tears down (trap). Skips, with a message, without MPI in ./tuna (or $TUNA_BIN),
# without mpirun, or where network namespaces cannot be made (not root, no CAP_NET_ADMIN).
# Run from the repo root. Prints "test_mpi_netns: N passed, N failed, N skipped"; exits non-zero
# on any failure.
set -u
NAME=test_mpi_netns
. tests/mpi_lib.sh
mpi_required
if ! command -v ip >/dev/null 2>&1; then
    echo "SKIP test_mpi_netns: no ip command (iproute2)"; skip=$((skip + 1)); done_
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
A=tunaA$$; B=tunaB$$            # the namespaces, "hosts" a and b
NET=10.$(($$ % 200 + 20)).$(($$ / 200 % 250 + 1))
IPA=$NET.1; IPB=$NET.2
W=$(mktemp -d /tmp/tuna_mpi_netns.XXXXXX)
cleanup() {
    for ns in $A $B; do # what still runs in a namespace is ours
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$W"
}
trap cleanup EXIT
if ! ip netns add "$A" 2>"$W/err"; then
    echo "SKIP test_mpi_netns: cannot create a network namespace (root or CAP_NET_ADMIN needed): $(cat "$W/err")"
    skip=$((skip + 1)); done_
fi
ip netns add "$B" &&
    ip link add vA$$ netns "$A" type veth peer name vB$$ netns "$B" &&
    ip -n "$A" addr add "$IPA/24" dev vA$$ && ip -n "$B" addr add "$IPB/24" dev vB$$ &&
    ip -n "$A" link set lo up && ip -n "$B" link set lo up &&
    ip -n "$A" link set vA$$ up && ip -n "$B" link set vB$$ up \
    || { bad "setting up the namespaces and the veth pair failed"; done_; }
# the "ssh" to a host: an address of ours becomes its namespace (Open MPI may put options first)
cat >"$W/nsexec" <<EOF
#!/bin/sh
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in
$IPA) ns=$A ;;
$IPB) ns=$B ;;
*) echo "nsexec: unknown host \$host" >&2; exit 255 ;;
esac
exec ip netns exec \$ns sh -c "\$*"
EOF
chmod +x "$W/nsexec"
printf '%s slots=1\n%s slots=1\n' "$IPA" "$IPB" >"$W/hostfile"
# veth bytes "rx tx" as host a sees them
bytes() { ip -n "$A" -s link show vA$$ | awk '/RX:/ {getline; rx = $1} /TX:/ {getline; tx = $1} END {print rx, tx}'; }
COMMON="--model models/stories260K --dataset identity --vars name=Tuna,author=Tuna-devs
        --template vanilla --max-steps 20 --val-size 0 --logging-steps 1 --save-steps 0
        --lr 1e-3 --threads 1 --quiet"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for m in lora full; do
    # shellcheck disable=SC2086
    timeout 300 "$BIN" train $COMMON --method $m --batch-size 4 --output "$W/$m-1" >"$W/$m-1.log" 2>&1 \
        || { bad "$m: one process failed: $(tail -3 "$W/$m-1.log")"; continue; }
    before=$(bytes)
    # shellcheck disable=SC2086
    timeout -k 10 300 ip netns exec "$A" mpirun --hostfile "$W/hostfile" -np 2 --map-by node \
        --mca plm_rsh_agent "$W/nsexec" --mca oob_tcp_if_include "$NET.0/24" \
        --mca btl tcp,self --mca btl_tcp_if_include "$NET.0/24" \
        -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
        "$BIN" train $COMMON --method $m --batch-size 2 --output "$W/$m-2" >"$W/$m-2.log" 2>&1 \
        || { bad "$m: 2 hosts failed: $(tail -8 "$W/$m-2.log")"; continue; }
    after=$(bytes)
    echo "test_mpi_netns: $m: veth of host a ($IPA) rx/tx bytes before $before, after $after"
    echo "$before $after" | awk '{exit !($3 - $1 > 100000 && $4 - $2 > 100000)}' && ok \
        || bad "$m: under 100 kB each way over the veth ($before -> $after)"
    grep -q '"world_size":2' "$W/$m-2/metrics.jsonl" && ok || bad "$m: no world_size 2 in the start event"
    losses "$W/$m-1/metrics.jsonl" >"$W/a"
    losses "$W/$m-2/metrics.jsonl" >"$W/b"
    worst=$(paste "$W/a" "$W/b" | awk '{d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1;
        r = a > 0 ? d / a : d; if (r > w) w = r} END {printf "%.3g", w + 0}')
    echo "test_mpi_netns: $m: worst relative loss difference over 20 steps $worst (2 hosts x 2 vs 1 x 4)"
    [ "$(wc -l <"$W/a")" -eq 20 ] && [ "$(wc -l <"$W/b")" -eq 20 ] && ok || bad "$m: not 20 step events each"
    awk -v w="$worst" 'BEGIN {exit !(w <= 1e-5)}' && ok || bad "$m: worst relative difference $worst > 1e-5"
done
done_
