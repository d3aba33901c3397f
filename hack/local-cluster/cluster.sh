#!/usr/bin/env bash
# vmscale's local cluster: a real two-node Kubernetes cluster on one machine,
# without Docker.
#
#   host network namespace: etcd, kube-apiserver, kube-controller-manager,
#     kube-scheduler (the default scheduler) and kube-proxy (iptables), with a
#     bridge (vmscale0, 10.250.0.1) joining the nodes;
#   node-a, node-b: each a containerd + kubelet in its own network namespace
#     (10.250.0.2 / .3), with its own root, state, sockets, cgroup root, pod
#     log folder and pod CIDR (10.244.1.0/24 / 10.244.2.0/24);
#   CoreDNS as a pod behind the kube-dns Service (10.96.0.10), answering for
#     cluster.local only (no DNS leaves the machine);
#   the VMs' extra network (README "The extra network and IPPool"): in each
#     node's namespace a bridge neon-br0 and a VXLAN neon-vxlan0 to the other
#     node, one L2 segment for 10.100.0.0/16, which the host joins too
#     (vmscale-ovl, 10.100.255.254); runner pods get their net1 on neon-br0
#     from vmscale-netattach, a chained CNI plugin standing in for Multus.
#
#   cluster.sh up       bring it up (a no-op when it is up); prints KUBECONFIG
#   cluster.sh down     stop everything and remove what up created on the host
#   cluster.sh status   what runs, and the nodes
#   cluster.sh logs [component]   the last lines of a component's log
#   cluster.sh images   (re)build vmscale's images and import them into both nodes
#
# State lives in $VMSCALE_CLUSTER_DIR (default $VMSCALE_CACHE/local-cluster);
# its kubeconfig is $VMSCALE_CLUSTER_DIR/kubeconfig.
source "$(dirname "$0")/../lib/common.sh"

DIR="${VMSCALE_CLUSTER_DIR:-$VMSCALE_CACHE/local-cluster}"
LOGS="$DIR/logs"
PIDS="$DIR/pids"
PKI="$DIR/pki"
KUBECONFIG_OUT="$DIR/kubeconfig"

BRIDGE=vmscale0
HOST_IP=10.250.0.1
NET_CIDR=10.250.0.0/24
SERVICE_CIDR=10.96.0.0/16
SERVICE_API_IP=10.96.0.1
DNS_IP=10.96.0.10
CLUSTER_CIDR=10.244.0.0/16
ETCD_PORT=12379
API_PORT=6443
NODES=(node-a node-b)
declare -A NODE_IP=([node-a]=10.250.0.2 [node-b]=10.250.0.3)
declare -A POD_CIDR=([node-a]=10.244.1.0/24 [node-b]=10.244.2.0/24)
declare -A VETH=([node-a]=vmscale-a [node-b]=vmscale-b)

# The extra network (docs/neonvm.md#network-and-ippool): bridge + VXLAN per node, the
# NetworkAttachmentDefinition name runner pods ask for, and the host's port.
OVERLAY_BRIDGE=neon-br0
OVERLAY_VXLAN=neon-vxlan0
OVERLAY_VNI=100
OVERLAY_PORT=4789
OVERLAY_MTU=1450 # the underlay's 1500 less VXLAN's 50
OVERLAY_NAD=neonvm-system/neonvm-overlay-net
OVERLAY_HOST_VETH=vmscale-ovl
OVERLAY_HOST_IP=10.100.255.254/16 # the range's last address; IPAM hands out the lowest free ones
OVERLAY_HOST_NODE=node-a
CNI_BIN="$DIR/cni-bin"

netns() { echo "vmscale-$1"; }
kubectl_() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

# ---------- processes ----------

# start NAME [netns] -- CMD...: runs CMD detached, logging to $LOGS/NAME.log.
start() {
	local name="$1" ns="$2"; shift 2
	[ "$1" = "--" ] && shift
	if running "$name"; then return 0; fi
	local pre=()
	# nsenter, not `ip netns exec`: the latter remounts /sys in a new mount
	# namespace, hiding the cgroup mounts the kubelet needs.
	[ -n "$ns" ] && pre=(nsenter "--net=/run/netns/$ns")
	# fd 9 is the command lock: daemons must not inherit it.
	setsid "${pre[@]}" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$PIDS/$name.pid"
}

# running NAME: its process exists and is not a zombie (a killed daemon whose
# parent is gone may linger unreaped).
running() {
	[ -f "$PIDS/$1.pid" ] || return 1
	local pid; pid="$(cat "$PIDS/$1.pid")"
	[ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

stop() {
	local name="$1"
	[ -f "$PIDS/$name.pid" ] || return 0
	local pid; pid="$(cat "$PIDS/$name.pid")"
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$PIDS/$name.pid"
}

# wait_for WHAT TIMEOUT CMD...: polls CMD until it succeeds, printing progress;
# on timeout says what failed and where its log is.
wait_for() {
	local what="$1" timeout="$2" logname="$3"; shift 3
	local start=$SECONDS next=10
	until "$@" >/dev/null 2>&1; do
		if (( SECONDS - start >= timeout )); then
			log "FAILED: $what not ready after ${timeout}s; see $LOGS/$logname.log:"
			tail -n 20 "$LOGS/$logname.log" >&2 || true
			exit 1
		fi
		if (( SECONDS - start >= next )); then
			log "  waiting for $what ($((SECONDS - start))s)"
			next=$((next + 10))
		fi
		sleep 0.5
	done
}

# ---------- one-time setup ----------

install_deps() {
	apt_install containerd runc containernetworking-plugins iptables conntrack iproute2 openssl
	BIN="$("$VMSCALE_ROOT/hack/k8s-binaries.sh")"
	COREDNS="$("$VMSCALE_ROOT/hack/coredns.sh")"
	echo "$BIN" >"$DIR/bin"
}

make_pki() {
	[ -f "$PKI/tokens.csv" ] && return 0
	log "making the cluster's CA, serving certificate, service-account key and tokens"
	mkdir -p "$PKI"
	(
		cd "$PKI"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=vmscale-local-ca" 2>/dev/null
		cat >apiserver.ext <<-EXT
			subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP,IP:$SERVICE_API_IP
			extendedKeyUsage=serverAuth
		EXT
		openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		tok() { openssl rand -hex 16; }
		{
			echo "$(tok),admin,admin,system:masters"
			echo "$(tok),system:kube-controller-manager,kcm"
			echo "$(tok),system:kube-scheduler,scheduler"
			echo "$(tok),system:kube-proxy,kube-proxy"
			for n in "${NODES[@]}"; do echo "$(tok),system:node:$n,$n,system:nodes"; done
		} >tokens.csv
		chmod 600 ./*.key tokens.csv
	)
}

# kubeconfig USER FILE: a kubeconfig for USER's token, reaching the apiserver
# at the host bridge address (which the nodes' namespaces reach too).
kubeconfig() {
	local user="$1" file="$2" token
	token="$(awk -F, -v u="$user" '$2 == u { print $1 }' "$PKI/tokens.csv")"
	cat >"$file" <<-KC
		apiVersion: v1
		kind: Config
		clusters:
		- name: vmscale-local
		  cluster:
		    server: https://$HOST_IP:$API_PORT
		    certificate-authority: $PKI/ca.crt
		users:
		- name: $user
		  user:
		    token: $token
		contexts:
		- name: vmscale-local
		  context: {cluster: vmscale-local, user: $user}
		current-context: vmscale-local
	KC
	chmod 600 "$file"
}

# ---------- network ----------

setup_network() {
	sysctl -qw net.ipv4.ip_forward=1
	if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link add "$BRIDGE" type bridge
	fi
	ip addr replace "$HOST_IP/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	for n in "${NODES[@]}"; do
		local ns; ns="$(netns "$n")"
		[ -e "/run/netns/$ns" ] || ip netns add "$ns"
		if ! ip link show "${VETH[$n]}" >/dev/null 2>&1; then
			ip link add "${VETH[$n]}" type veth peer name eth0 netns "$ns"
			ip link set "${VETH[$n]}" master "$BRIDGE" up
		fi
		# br_netfilter DNATs Service traffic while the frame is still on the
		# bridge; a pod reaching a Service whose endpoint is on its own node
		# then leaves by the port it came in on, which needs hairpin.
		ip link set "${VETH[$n]}" type bridge_slave hairpin on
		ip netns exec "$ns" ip link set lo up
		ip netns exec "$ns" ip addr replace "${NODE_IP[$n]}/24" dev eth0
		ip netns exec "$ns" ip link set eth0 up
		ip netns exec "$ns" ip route replace default via "$HOST_IP"
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
		ip route replace "${POD_CIDR[$n]}" via "${NODE_IP[$n]}"
	done
	# The node namespaces reach the Service CIDR through the host, where
	# kube-proxy's rules are; let the host forward between them.
	for cidr in "$CLUSTER_CIDR" "$NET_CIDR"; do
		iptables -C FORWARD -s "$cidr" -j ACCEPT 2>/dev/null || iptables -I FORWARD -s "$cidr" -j ACCEPT
		iptables -C FORWARD -d "$cidr" -j ACCEPT 2>/dev/null || iptables -I FORWARD -d "$cidr" -j ACCEPT
	done
}

# setup_overlay: the extra network's L2 segment. Idempotent, and safe on a
# running cluster: it only adds links that are missing (running pods keep
# theirs; new runner pods get a net1 on it).
setup_overlay() {
	for n in "${NODES[@]}"; do
		local ns other; ns="$(netns "$n")"
		for o in "${NODES[@]}"; do [ "$o" != "$n" ] && other="${NODE_IP[$o]}"; done
		in_ns() { ip netns exec "$ns" "$@"; }
		in_ns ip link show "$OVERLAY_BRIDGE" >/dev/null 2>&1 || in_ns ip link add "$OVERLAY_BRIDGE" mtu "$OVERLAY_MTU" type bridge
		if ! in_ns ip link show "$OVERLAY_VXLAN" >/dev/null 2>&1; then
			# Unicast to the one other node; the bridge learns which
			# side each MAC is on (and QEMU's announce after a migration
			# moves it at once).
			in_ns ip link add "$OVERLAY_VXLAN" mtu "$OVERLAY_MTU" type vxlan id "$OVERLAY_VNI" \
				local "${NODE_IP[$n]}" remote "$other" dstport "$OVERLAY_PORT" dev eth0 learning
		fi
		in_ns ip link set "$OVERLAY_VXLAN" master "$OVERLAY_BRIDGE" up
		in_ns ip link set "$OVERLAY_BRIDGE" up
	done
	# The host's port on the segment, so tests on the host reach the
	# guests' extra-network addresses.
	if ! ip link show "$OVERLAY_HOST_VETH" >/dev/null 2>&1; then
		ip link add "$OVERLAY_HOST_VETH" mtu "$OVERLAY_MTU" type veth peer name ovl-host mtu "$OVERLAY_MTU" \
			netns "$(netns "$OVERLAY_HOST_NODE")"
	fi
	ip netns exec "$(netns "$OVERLAY_HOST_NODE")" ip link set ovl-host master "$OVERLAY_BRIDGE" up
	ip addr replace "$OVERLAY_HOST_IP" dev "$OVERLAY_HOST_VETH"
	ip link set "$OVERLAY_HOST_VETH" up
}

# install_cni_plugins: the nodes' CNI bin dir, Debian's plugins plus ours
# (built from this checkout; replaced atomically, since a runtime may be
# running it).
install_cni_plugins() {
	local out="$VMSCALE_CACHE/cni/vmscale-netattach"
	mkdir -p "$CNI_BIN" "$(dirname "$out")"
	(cd "$VMSCALE_ROOT" && CGO_ENABLED=0 go build -trimpath -o "$out.new" ./hack/local-cluster/netattach/vmscale-netattach) \
		|| { log "FAILED: building hack/local-cluster/netattach/vmscale-netattach"; exit 1; }
	mv -f "$out.new" "$out"
	for p in /usr/lib/cni/*; do ln -sfn "$p" "$CNI_BIN/$(basename "$p")"; done
	cp -f "$out" "$CNI_BIN/.vmscale-netattach.new"
	mv -f "$CNI_BIN/.vmscale-netattach.new" "$CNI_BIN/vmscale-netattach"
}

# Pod sandboxes' network namespaces (/run/netns/cni-*) outlive containerd when
# it is stopped or killed without tearing its pods down; remove those no
# process uses any more.
remove_stale_pod_netns() {
	local ns
	for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ { print $1 }'); do
		[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && ip netns del "$ns" 2>/dev/null || true
	done
}

teardown_network() {
	ip link del "$OVERLAY_HOST_VETH" 2>/dev/null || true
	for n in "${NODES[@]}"; do
		ip route del "${POD_CIDR[$n]}" 2>/dev/null || true
		ip link del "${VETH[$n]}" 2>/dev/null || true
		ip netns del "$(netns "$n")" 2>/dev/null || true
	done
	ip link del "$BRIDGE" 2>/dev/null || true
	for cidr in "$CLUSTER_CIDR" "$NET_CIDR"; do
		while iptables -D FORWARD -s "$cidr" -j ACCEPT 2>/dev/null; do :; done
		while iptables -D FORWARD -d "$cidr" -j ACCEPT 2>/dev/null; do :; done
	done
}

# ---------- control plane ----------

start_control_plane() {
	mkdir -p "$DIR/etcd"
	start etcd "" -- etcd --name vmscale --data-dir "$DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
		--initial-cluster vmscale=http://127.0.0.1:12380 --listen-metrics-urls http://127.0.0.1:12381
	wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

	start kube-apiserver "" -- "$BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$HOST_IP" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--allow-privileged=true --profiling=false
	wait_for kube-apiserver 90 kube-apiserver kubectl_ get --raw /readyz

	kubeconfig system:kube-controller-manager "$DIR/kcm.kubeconfig"
	start kube-controller-manager "" -- "$BIN/kube-controller-manager" \
		--kubeconfig "$DIR/kcm.kubeconfig" \
		--authentication-kubeconfig "$DIR/kcm.kubeconfig" --authorization-kubeconfig "$DIR/kcm.kubeconfig" \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--use-service-account-credentials --leader-elect=false \
		--bind-address 127.0.0.1 --cluster-cidr "$CLUSTER_CIDR" --service-cluster-ip-range "$SERVICE_CIDR"

	kubeconfig system:kube-scheduler "$DIR/scheduler.kubeconfig"
	start kube-scheduler "" -- "$BIN/kube-scheduler" \
		--kubeconfig "$DIR/scheduler.kubeconfig" \
		--authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
		--leader-elect=false --bind-address 127.0.0.1

	kubeconfig system:kube-proxy "$DIR/proxy.kubeconfig"
	start kube-proxy "" -- "$BIN/kube-proxy" \
		--kubeconfig "$DIR/proxy.kubeconfig" --proxy-mode iptables \
		--cluster-cidr "$CLUSTER_CIDR" --masquerade-all \
		--hostname-override vmscale-host --conntrack-max-per-core 0 \
		--metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
}

# ---------- nodes ----------

node_dir() { echo "$DIR/nodes/$1"; }

# write_containerd_config NODE: the node's folders and containerd.toml;
# CONTAINERD_CHANGED says whether the file changed (containerd reads it only
# at start; it reloads the CNI folder by itself).
write_containerd_config() {
	local n="$1" d; d="$(node_dir "$n")"
	mkdir -p "$d"/{containerd,runc,cni,cni-ipam,kubelet,pod-logs}
	cat >"$d/containerd.toml.new" <<-TOML
		version = 2
		root = "$d/containerd/root"
		state = "$d/containerd/state"
		[grpc]
		  address = "$d/containerd.sock"
		[ttrpc]
		  address = "$d/containerd.sock.ttrpc"
		[debug]
		  address = "$d/containerd-debug.sock"
		[metrics]
		  address = ""
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$d/containerd/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "docker.io/vmscale/pause:v1"
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		        Root = "$d/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "$CNI_BIN"
		    conf_dir = "$d/cni"
	TOML
	CONTAINERD_CHANGED=false
	if ! cmp -s "$d/containerd.toml.new" "$d/containerd.toml"; then CONTAINERD_CHANGED=true; fi
	mv -f "$d/containerd.toml.new" "$d/containerd.toml"
}

# write_cni_config NODE: the pod network (bridge cni0, host-local IPAM,
# portmap) and, chained after it, vmscale-netattach for the extra network.
# Written by rename: containerd watches the folder.
write_cni_config() {
	local n="$1" d; d="$(node_dir "$n")"
	cat >"$d/cni/.10-vmscale.conflist.new" <<-CNI
		{
		  "cniVersion": "0.4.0",
		  "name": "vmscale",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "cni0",
		      "isGateway": true,
		      "ipMasq": false,
		      "hairpinMode": true,
		      "ipam": {
		        "type": "host-local",
		        "dataDir": "$d/cni-ipam",
		        "ranges": [[{"subnet": "${POD_CIDR[$n]}"}]],
		        "routes": [{"dst": "0.0.0.0/0"}]
		      }
		    },
		    {"type": "portmap", "capabilities": {"portMappings": true}},
		    {
		      "type": "vmscale-netattach",
		      "kubeconfig": "$d/kubelet.kubeconfig",
		      "networks": {"$OVERLAY_NAD": "$OVERLAY_BRIDGE"}
		    }
		  ]
		}
	CNI
	mv -f "$d/cni/.10-vmscale.conflist.new" "$d/cni/10-vmscale.conflist"
}

write_kubelet_config() {
	local n="$1" d; d="$(node_dir "$n")"
	: >"$d/resolv.conf"
	cat >"$d/kubelet.yaml" <<-YAML
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		authentication:
		  anonymous: {enabled: true}
		  webhook: {enabled: false}
		authorization: {mode: AlwaysAllow}
		cgroupDriver: cgroupfs
		cgroupRoot: /vmscale-$n
		failCgroupV1: false
		failSwapOn: false
		containerRuntimeEndpoint: unix://$d/containerd.sock
		podLogsDir: $d/pod-logs
		clusterDNS: [$DNS_IP]
		clusterDomain: cluster.local
		resolvConf: $d/resolv.conf
		address: ${NODE_IP[$n]}
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		serializeImagePulls: false
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
		allowedUnsafeSysctls: ["net.ipv4.ip_forward"]
		registerWithTaints: []
		# Pods are re-synced (and ConfigMap/Secret volumes refreshed) every
		# 10 s instead of every minute: watched disks reach guests sooner.
		syncFrequency: 10s
	YAML
	kubeconfig "system:node:$n" "$d/kubelet.kubeconfig"
	# Each kubelet owns its own cgroup root, or each would remove the other's
	# pods as orphans.
	for c in /sys/fs/cgroup/*; do
		[ "$(basename "$c")" = unified ] && continue
		mkdir -p "$c/vmscale-$n"
		if [ "$(basename "$c")" = cpuset ]; then
			cat "$c/cpuset.cpus" >"$c/vmscale-$n/cpuset.cpus"
			cat "$c/cpuset.mems" >"$c/vmscale-$n/cpuset.mems"
		fi
	done
}

start_node() {
	local n="$1" d ns; d="$(node_dir "$n")"; ns="$(netns "$n")"
	write_containerd_config "$n"
	write_cni_config "$n"
	write_kubelet_config "$n"
	start "containerd-$n" "$ns" -- containerd --config "$d/containerd.toml"
	wait_for "containerd on $n" 30 "containerd-$n" ctr -a "$d/containerd.sock" version
	import_images "$n"
	start "kubelet-$n" "$ns" -- "$BIN/kubelet" \
		--config "$d/kubelet.yaml" --kubeconfig "$d/kubelet.kubeconfig" \
		--root-dir "$d/kubelet" --hostname-override "$n" --node-ip "${NODE_IP[$n]}"
}

# refresh_node NODE: brings a running node's configuration up to date. Only
# a changed containerd.toml restarts containerd (its containers live on in
# their shims, and the kubelet reconnects); the CNI configuration is written
# after, since it may name a plugin only the new bin_dir has.
refresh_node() {
	local n="$1" d ns; d="$(node_dir "$n")"; ns="$(netns "$n")"
	write_containerd_config "$n"
	if $CONTAINERD_CHANGED; then
		log "node $n: containerd's configuration changed: restarting containerd (pods keep running)"
		stop "containerd-$n"
		start "containerd-$n" "$ns" -- containerd --config "$d/containerd.toml"
		wait_for "containerd on $n" 30 "containerd-$n" ctr -a "$d/containerd.sock" version
	fi
	write_cni_config "$n"
}

# import_images NODE: loads every image tarball into the node's containerd.
import_images() {
	local n="$1" d; d="$(node_dir "$n")"
	for tar in "$IMAGES"/*.tar; do
		ctr -a "$d/containerd.sock" -n k8s.io images import --no-unpack=false "$tar" >/dev/null \
			|| { log "FAILED: importing $tar into $n"; exit 1; }
	done
}

build_images() {
	IMAGES="$VMSCALE_CACHE/images"
	log "building images (make images) into $IMAGES"
	# The runner image carries a Debian root with QEMU and the test guest's
	# kernel; the guest's root disk is an image of its own (vm-postgres).
	local rootfs guest
	rootfs="$("$VMSCALE_ROOT/hack/runner-rootfs.sh")"
	guest="$("$VMSCALE_ROOT/hack/guest/build.sh")"
	(cd "$VMSCALE_ROOT/hack/images" && go run . -root ../.. -out "$IMAGES" -extra "coredns=$COREDNS" \
		-runner-rootfs "$rootfs" -guest "$guest") 2>&1 | sed 's/^/  /' >&2
}

# ---------- add-ons ----------

deploy_coredns() {
	local ref; ref="$(awk '$1 == "coredns" { print $2 }' "$IMAGES/images.txt")"
	sed -e "s|@IMAGE@|$ref|" -e "s|@DNS_IP@|$DNS_IP|" "$VMSCALE_ROOT/hack/local-cluster/coredns.yaml" | kubectl_ apply -f - >/dev/null
}

# ---------- commands ----------

healthy() {
	for p in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do running "$p" || return 1; done
	for n in "${NODES[@]}"; do running "containerd-$n" && running "kubelet-$n" || return 1; done
	kubectl_ get --raw /readyz >/dev/null 2>&1
}

cmd_up() {
	mkdir -p "$LOGS" "$PIDS"
	install_deps
	install_cni_plugins
	if healthy; then
		# A cluster brought up before the extra network existed gets it
		# now; new pods use it.
		setup_overlay
		for n in "${NODES[@]}"; do refresh_node "$n"; done
		# Keep the nodes' images current with the source: a rebuild from the
		# Go build cache takes seconds, and the import only runs on a change.
		local before; before="$(cat "$VMSCALE_CACHE/images/images.txt" 2>/dev/null || true)"
		build_images
		if [ "$before" != "$(cat "$VMSCALE_CACHE/images/images.txt")" ]; then
			log "images changed: importing them into both nodes"
			for n in "${NODES[@]}"; do import_images "$n"; done
		fi
		log "local cluster is already up"
		echo "$KUBECONFIG_OUT"
		return 0
	fi
	local t0=$SECONDS
	make_pki
	kubeconfig admin "$KUBECONFIG_OUT"
	build_images
	log "network: bridge $BRIDGE, namespaces $(netns node-a) $(netns node-b)"
	remove_stale_pod_netns
	setup_network
	setup_overlay
	log "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy"
	start_control_plane
	for n in "${NODES[@]}"; do
		log "node $n: containerd + kubelet in $(netns "$n") (${NODE_IP[$n]}, pods ${POD_CIDR[$n]})"
		start_node "$n"
	done
	for n in "${NODES[@]}"; do
		wait_for "node $n Ready" 120 "kubelet-$n" \
			bash -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_OUT' get node $n -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
	done
	log "CoreDNS"
	deploy_coredns
	wait_for "CoreDNS available" 120 kube-apiserver kubectl_ -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
	log "local cluster up in $((SECONDS - t0))s; export KUBECONFIG=$KUBECONFIG_OUT"
	echo "$KUBECONFIG_OUT"
}

cmd_down() {
	local BIN; BIN="$(cat "$DIR/bin" 2>/dev/null || true)"
	log "stopping the local cluster"
	for n in "${NODES[@]}"; do stop "kubelet-$n"; done
	for n in "${NODES[@]}"; do
		local d; d="$(node_dir "$n")"
		# Containers outlive containerd in their shims: stop them first.
		pkill -TERM -f "containerd-shim-runc-v2 .*-address $d/containerd.sock" 2>/dev/null || true
		stop "containerd-$n"
		pkill -KILL -f "containerd-shim-runc-v2 .*-address $d/containerd.sock" 2>/dev/null || true
	done
	for p in kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$p"; done
	if [ -n "$BIN" ] && [ -x "$BIN/kube-proxy" ]; then
		"$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
	fi
	# Mounts the kubelets and containerds left (volumes, rootfs, shm).
	{ grep -o " $DIR/nodes/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	for n in "${NODES[@]}"; do
		for c in /sys/fs/cgroup/*/vmscale-"$n"; do
			[ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
		done
	done
	teardown_network
	remove_stale_pod_netns
	rm -rf "$DIR/nodes" "$DIR/etcd"
	log "local cluster down"
}

cmd_status() {
	for p in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy \
		containerd-node-a kubelet-node-a containerd-node-b kubelet-node-b; do
		if running "$p"; then printf '  %-26s running (pid %s)\n' "$p" "$(cat "$PIDS/$p.pid")"
		else printf '  %-26s stopped\n' "$p"; fi
	done
	if [ -f "$KUBECONFIG_OUT" ] && running kube-apiserver; then
		BIN="$(cat "$DIR/bin")"
		kubectl_ get nodes -o wide
	fi
}

cmd_logs() {
	if [ $# -eq 0 ]; then ls "$LOGS"; return; fi
	tail -n "${LINES:-100}" "$LOGS/$1.log"
}

# One cluster command at a time: test packages run in parallel and may all
# ask for the cluster.
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
logs) shift; cmd_logs "$@" ;;
images)
	install_deps; build_images
	for n in "${NODES[@]}"; do import_images "$n"; done ;;
*) echo "usage: $0 up|down|status|logs [component]|images" >&2; exit 2 ;;
esac
