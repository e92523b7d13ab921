#!/usr/bin/env bash
# The README's side-by-side rows (jaxaffect.tools.versus), in float32 and bfloat16: one log per
# row in OUT_DIR, and each row's last line (ours_s=... torch_s=... ratio=...) on stdout.
#   launch/versus_table.sh OUT_DIR [versus flags, e.g. --steps 20 --torch_compile]
# Environment: PYTHON (default python3), DTYPES (default "float32 bfloat16"), ROWS (names below,
# default all), ROW_TIMEOUT (seconds per row, default 600).
set -u
out=${1:?usage: launch/versus_table.sh OUT_DIR [versus flags]}; shift
mkdir -p "$out"
declare -A args=(
  [bpmgcn_b32]="configs/bpmgcn_emogait.py"
  [tsl_200]="configs/tsl_tsl300.py --config.dataset.example_length=200"
  [vaanet_b2]="configs/vaanet_ve8.py --config.batch_size=2"
  [tsl_600]="configs/tsl_tsl300.py --config.dataset.example_length=600"
)
status=0
for dtype in ${DTYPES:-float32 bfloat16}; do
  for row in ${ROWS:-bpmgcn_b32 tsl_200 vaanet_b2 tsl_600}; do
    log="$out/${row}_${dtype}.log"
    # shellcheck disable=SC2086  # the row's arguments are words
    timeout "${ROW_TIMEOUT:-600}" "${PYTHON:-python3}" -m jaxaffect.tools.versus \
        --config ${args[$row]} --config.model.dtype="$dtype" "$@" >"$log" 2>&1 || status=1
    echo "$row $dtype: $(tail -n 1 "$log")"
  done
done
exit $status
