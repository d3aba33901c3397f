#!/usr/bin/env bash
# make demo: from a fresh machine to a Postgres VM scaling up under load and
# back down after it, live.
#
#   1. installs what is missing (Debian packages, Kubernetes binaries built
#      from source, QEMU, Postgres client tools), all cached in $VMSCALE_CACHE;
#   2. brings up the local two-node cluster (hack/local-cluster/cluster.sh),
#      building the guest and the images;
#   3. deploys vmscale (neonvm-controller, autoscale-scheduler,
#      autoscaler-agent) to it;
#   4. starts an autoscaled Postgres VM in namespace vmscale-demo (0.25-2
#      vCPUs, 512 MiB-2 GiB);
#   5. shows it live with vmscale-top while pgbench loads it, then while it
#      scales back down;
#   6. leaves everything up to explore, and says how to tear it down.
#
# DEMO_LOAD_SECONDS (default 150) sets how long pgbench runs.
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

ns=vmscale-demo
load_seconds="${DEMO_LOAD_SECONDS:-150}"
start=$SECONDS
step() { log "== $* ($((SECONDS - start))s)"; }

step "1/5 installing what is missing (cached in $VMSCALE_CACHE; first time: builds Kubernetes from source, ~7 min)"
hack/k8s-binaries.sh >/dev/null
hack/qemu.sh >/dev/null
hack/postgres.sh >/dev/null # psql and pgbench, to load the VM from here

step "2/5 the local two-node cluster (first time: builds the guest and the images, ~8 min)"
hack/local-cluster/cluster.sh up >/dev/null
export KUBECONFIG="$VMSCALE_CACHE/local-cluster/kubeconfig"

step "3/5 deploying vmscale"
DEPLOY_CONFIG=config/local-cluster hack/deploy.sh up

step "4/5 an autoscaled Postgres VM: $ns/pg"
image="$(awk '$1 == "vm-postgres" { print $2 }' "$VMSCALE_CACHE/images/images.txt")"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" delete neonvm pg --ignore-not-found --wait=true >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: pg
  labels:
    autoscaling.neon.tech/enabled: "true"
spec:
  schedulerName: autoscale-scheduler
  guest:
    cpus: {min: 250m, max: 2, use: 250m}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 8, use: 2}
    rootDisk: {image: $image, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
EOF
ip=""
for _ in $(seq 300); do
	ip="$(kubectl -n "$ns" get neonvm pg -o jsonpath='{.status.podIP}' 2>/dev/null || true)"
	[ -n "$ip" ] && PGCONNECT_TIMEOUT=3 psql -h "$ip" -U postgres -Atc 'select 1' >/dev/null 2>&1 && break
	ip=""
	sleep 1
done
[ -n "$ip" ] || die "the VM's Postgres did not answer within 5 minutes: kubectl -n $ns describe neonvm pg"
log "Postgres answers on $ip:5432"

step "5/5 load, live"
go build -o "$VMSCALE_CACHE/bin/vmscale-top" ./cmd/vmscale-top
banner="$(mktemp)"
trap 'rm -f "$banner"; kill $(jobs -p) 2>/dev/null || true' EXIT

# vmscale-top redraws the table every second; the scenario writes what it
# is doing into the banner above it, and stops it when the VM is back at its
# minimum.
"$VMSCALE_CACHE/bin/vmscale-top" -n "$ns" --banner-file "$banner" pg &
top_pid=$!
say() { echo "$*" >"$banner"; }
say "idle for 20 s (the boot's load settles)"
sleep 20
say "pgbench: initialising a scale-2 database"
pgbench -h "$ip" -U postgres -i -s 2 -q postgres >/dev/null 2>&1
say "pgbench: 8 clients for ${load_seconds} s -- watch vCPUs and memory grow (permit first, then the VM, then the monitor)"
pgbench -h "$ip" -U postgres -c 8 -j 2 -T "$load_seconds" postgres >/dev/null 2>&1 || true
say "load stopped -- the load average falls and the VM scales back down (the vm-monitor approves each step)"
# Back down means memory at its minimum and CPU at most two compute units: an
# idle guest under TCG (no KVM) keeps a load average of 0.2-0.5, which at the
# default load target (0.9) is one or two units.
down=""
for _ in $(seq 300); do
	now="$(kubectl -n "$ns" get neonvm pg -o jsonpath='{.status.cpus} {.status.memorySize}')"
	case "$now" in "250m 512Mi" | "500m 512Mi") down=1; break ;; esac
	sleep 2
done
if [ -z "$down" ]; then
	say "not back down 10 min after the load: $now (see kubectl -n kube-system logs ds/autoscaler-agent)"
	sleep 3
	die "the VM did not scale back down (status: $now)"
fi
say "back down at $now: done in $((SECONDS - start))s"
sleep 3
kill "$top_pid" 2>/dev/null || true
wait "$top_pid" 2>/dev/null || true

cat <<EOF

The cluster and the VM are still up. Explore:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $ns get neonvm pg -o wide        # phase, CPUs, memory, node
  kubectl -n $ns describe neonvm pg           # conditions and events
  psql -h $ip -U postgres                     # the guest's Postgres
  $VMSCALE_CACHE/bin/vmscale-top -n $ns pg    # live view again
  kubectl -n kube-system logs ds/autoscaler-agent   # the agent's decisions
  docs/operations.md                          # configure, observe, troubleshoot

Tear down:
  kubectl delete namespace $ns                # the VM
  make undeploy-local                         # vmscale, keeping the CRDs
  make local-cluster-down                     # the whole cluster
EOF
