#!/usr/bin/env bash
# Deploys vmscale (CRDs, neonvm-controller with its webhooks,
# autoscale-scheduler, autoscaler-agent) to the cluster of $KUBECONFIG and
# waits until every part answers.
#
#   hack/deploy.sh up      render $DEPLOY_CONFIG (default config/deploy) with
#                          the images of a build, apply it, wait for rollout
#   hack/deploy.sh down    delete what `up` applied, except the CRDs (deleting
#                          them would delete every VM); VMs and migrations are
#                          left to the user
#   hack/deploy.sh render  print the manifests `up` would apply
#
# Images: each vmscale/<name>:dev in the manifests becomes the reference
# recorded for <name> in $IMAGES_TXT (default $VMSCALE_CACHE/images/images.txt,
# written by `make images`), or vmscale/<name>:$IMAGE_TAG when IMAGE_TAG is
# set (images pushed to a registry under that tag, or loaded into kind).
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

config="${DEPLOY_CONFIG:-config/deploy}"
images_txt="${IMAGES_TXT:-$VMSCALE_CACHE/images/images.txt}"
timeout="${DEPLOY_TIMEOUT:-300}"
kubectl_() { kubectl ${KUBECONFIG:+--kubeconfig "$KUBECONFIG"} "$@"; }

render() {
	local manifests; manifests="$(go tool -modfile=hack/tools/go.mod kustomize build "$config")"
	local subst=()
	for name in neonvm-controller neonvm-runner autoscale-scheduler autoscaler-agent; do
		local ref=""
		if [ -n "${IMAGE_TAG:-}" ]; then
			ref="vmscale/$name:$IMAGE_TAG"
		elif [ -f "$images_txt" ]; then
			ref="$(awk -v n="$name" '$1 == n { print $2 }' "$images_txt")"
		fi
		[ -n "$ref" ] || die "no image for $name: run \`make images\` (writes $images_txt) or set IMAGE_TAG"
		subst+=(-e "s|vmscale/$name:dev\$|$ref|")
	done
	sed "${subst[@]}" <<<"$manifests"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds, printing a
# progress line every 15 s and the last error on timeout.
wait_for() {
	local what="$1" limit="$2"; shift 2
	local start=$SECONDS out
	until out="$("$@" 2>&1)"; do
		if (( SECONDS - start >= limit )); then
			die "$what: not ready after ${limit}s: $out"
		fi
		# A first failure is expected (the rollout has just begun): report
		# only what persists, every 15 s.
		(( SECONDS - start > 0 && (SECONDS - start) % 15 == 0 )) && log "$what: waiting ($((SECONDS - start))s): ${out##*$'\n'}"
		sleep 1
	done
	log "$what: ready ($((SECONDS - start))s)"
}

# webhook_answers: a server-side dry-run create goes through both webhooks.
webhook_answers() {
	kubectl_ create --dry-run=server -o name -f - <<'EOF'
apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata: {name: deploy-probe, namespace: default}
spec:
  guest:
    cpus: {min: 1, max: 1, use: 1}
    memorySlotSize: 1Gi
    memorySlots: {min: 1, max: 1, use: 1}
    rootDisk: {image: vmscale/vm-postgres:dev}
EOF
}

# without_kinds REGEX: drops the documents of those kinds from a YAML stream.
without_kinds() {
	awk -v kinds="^kind: ($1)$" 'BEGIN { RS = "\n---\n" }
		{ n = split($0, lines, "\n"); keep = 1
		  for (i = 1; i <= n; i++) if (lines[i] ~ kinds) keep = 0
		  if (keep) printf "%s\n---\n", $0 }'
}

rollout() {
	kubectl_ -n "$1" rollout status "$2" --timeout=5s
}

case "${1:-up}" in
render) render ;;
up)
	log "deploying $config to $(kubectl_ config current-context 2>/dev/null || echo "the current cluster")"
	render | kubectl_ apply --server-side --force-conflicts -f - >/dev/null
	for crd in virtualmachines.vm.neon.tech virtualmachinemigrations.vm.neon.tech; do
		wait_for "CRD $crd" 60 bash -c "[ \"\$(kubectl ${KUBECONFIG:+--kubeconfig $KUBECONFIG} get crd $crd -o jsonpath='{.status.conditions[?(@.type==\"Established\")].status}')\" = True ]"
	done
	wait_for "neonvm-controller" "$timeout" rollout neonvm-system deployment/neonvm-controller
	wait_for "admission webhooks" "$timeout" webhook_answers
	wait_for "autoscale-scheduler" "$timeout" rollout kube-system deployment/autoscale-scheduler
	wait_for "autoscaler-agent" "$timeout" rollout kube-system daemonset/autoscaler-agent
	log "vmscale is deployed"
	;;
down)
	log "removing vmscale from $(kubectl_ config current-context 2>/dev/null || echo "the current cluster") (CRDs, VMs and migrations stay)"
	# The webhook configurations go first: pointing at a controller that is
	# gone, they would refuse every VM change.
	kubectl_ delete --ignore-not-found mutatingwebhookconfiguration neonvm-mutating-webhook-configuration >/dev/null
	kubectl_ delete --ignore-not-found validatingwebhookconfiguration neonvm-validating-webhook-configuration >/dev/null
	render | without_kinds 'CustomResourceDefinition|Namespace' |
		kubectl_ delete --ignore-not-found --wait=true --timeout="${timeout}s" -f - >/dev/null
	log "vmscale is removed"
	;;
*) echo "usage: $0 up|down|render" >&2; exit 2 ;;
esac
