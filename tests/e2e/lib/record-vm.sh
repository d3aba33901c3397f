#!/bin/sh
# record-vm.sh VM FILE SECONDS: appends one line a second to FILE for at most
# SECONDS, or until FILE.stop exists:
#   <unix time> <spec cpus use> <spec memorySlots use> <slot size> <approved permit JSON>
# check-vm-record.sh reads it. Run with NAMESPACE set.
vm="$1" file="$2" limit="$3"
end=$(( $(date +%s) + limit ))
while [ ! -f "$file.stop" ] && [ "$(date +%s)" -lt "$end" ]; do
	line="$(kubectl -n "$NAMESPACE" get neonvm "$vm" -o 'jsonpath={.spec.guest.cpus.use} {.spec.guest.memorySlots.use} {.spec.guest.memorySlotSize} {.metadata.annotations.internal\.autoscaling\.neon\.tech/resources-approved}' 2>/dev/null)" &&
		echo "$(date +%s) $line" >>"$file"
	sleep 1
done
