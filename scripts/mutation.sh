#!/usr/bin/env bash
# Mutation testing of the pure modules with mutmut 3 (a test extra), one module at a time.
#
#   scripts/mutation.sh [MODULE ...]     e.g. scripts/mutation.sh netguard sources
#
# Each module is mutated in a scratch copy of the work tree (so mutmut's mutants/ folder and
# its config never touch the checkout), against the unit tests that are meant to pin it down.
# Prints one line per module: "MODULE total killed survived timeout other", and the names
# of the surviving mutants (inspect one with `mutmut show NAME` in the scratch copy, kept
# when KEEP=1). Exits 1 when a module listed in ZERO_SURVIVORS (default: netguard) has a
# survivor that scripts/mutation-accepted.txt does not explain.
#
#   MUTANTS='tis_ray.scorer.x_cosine_rows* ...' scripts/mutation.sh scorer
#
# runs only the mutants whose names match (fnmatch patterns, as `mutmut run` takes them), and
# TESTS='tests/test_x.py ...' replaces the module's test list: for a module whose tests load a
# model, its pure functions against their own unit tests (the other mutants count as not run).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(netguard sources columns tables records hosts decode preprocess scorer)
zero=" ${ZERO_SURVIVORS:-netguard} "
# Survivors judged harmless (equivalent mutants, unreachable defensive lines), one per line
# with the reason after "#"; a survivor not listed there is a missing test.
accepted=$repo/scripts/mutation-accepted.txt

tests_for() {  # the unit tests that pin each module down (no Ray, no model download)
  case $1 in
    netguard) echo "tests/test_netguard.py tests/test_security.py" ;;
    sources) echo "tests/test_sources.py tests/test_sources_fuzz.py" ;;
    records) echo "tests/test_records.py tests/test_records_fuzz.py" ;;
    columns) echo "tests/test_records.py tests/test_records_fuzz.py tests/test_columns.py" ;;
    tables) echo "tests/test_records.py tests/test_records_fuzz.py tests/test_tables.py" ;;
    hosts) echo "tests/test_hosts.py" ;;
    decode) echo "tests/test_decode.py" ;;
    preprocess) echo "tests/test_preprocess.py" ;;
    scorer) echo "tests/test_scoring.py tests/test_scorer.py tests/test_families.py tests/test_score_stage.py" ;;
    *) echo "unknown module $1" >&2; return 2 ;;
  esac
}

# tests that start Ray or a subprocess job: not unit tests of the module, and minutes each
deselect='not batch_job and not peak_memory'

status=0
for module in "${modules[@]}"; do
  tests=${TESTS:-$(tests_for "$module")}
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/tis-mutation-$module.XXXX")
  (cd "$repo" && git ls-files -co --exclude-standard -z | grep -zv '^\.venv/' | xargs -0 cp --parents -t "$scratch")
  # Property tests: the same examples for every mutant, and no deadline (a loaded machine
  # makes Hypothesis' 200 ms deadline fail the unmutated run, which stops mutmut).
  cat >> "$scratch/tests/conftest.py" <<'PY'


from hypothesis import settings as _settings  # appended by scripts/mutation.sh

_settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
_settings.load_profile("mutation")
PY
  {
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"tis_ray\"]"
    echo "only_mutate = [\"tis_ray/$module.py\"]"
    printf 'pytest_add_cli_args_test_selection = [%s, "-k", "%s"]\n' \
      "$(for t in $tests; do printf '"%s", ' "$t"; done | sed 's/, $//')" "$deselect"
    echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]'
    echo 'also_copy = ["tests", "examples", "scripts"]'
  } >> "$scratch/pyproject.toml"
  # shellcheck disable=SC2086  # MUTANTS is a list of patterns, split on purpose
  (cd "$scratch" && "$python" -m mutmut run ${MUTANTS:-} > mutmut-run.log 2>&1) || true
  (cd "$scratch" && "$python" -m mutmut export-cicd-stats > /dev/null 2>&1) || true
  stats="$scratch/mutants/mutmut-cicd-stats.json"
  if [ ! -f "$stats" ]; then
    echo "$module: mutmut did not finish; see $scratch/mutmut-run.log" >&2
    tail -20 "$scratch/mutmut-run.log" >&2
    status=1
    continue
  fi
  "$python" - "$module" "$stats" <<'PY'
import json, sys
module, path = sys.argv[1:3]
s = json.load(open(path))
other = s["total"] - s["killed"] - s["survived"] - s.get("timeout", 0)
print(f"{module} total={s['total']} killed={s['killed']} survived={s['survived']} timeout={s.get('timeout', 0)} other={other}")
PY
  survivors=$(cd "$scratch" && "$python" -m mutmut results 2>/dev/null | grep -E ': (survived|no tests)' \
    | sed 's/: .*//' | sed 's/^ *//' || true)
  unexplained=0
  for name in $survivors; do
    if grep -qxF "$name" <(sed 's/ *#.*//' "$accepted"); then
      echo "  $name: survived (accepted: $(grep -F "$name " "$accepted" | sed 's/^[^#]*# *//'))"
    else
      echo "  $name: survived, NOT EXPLAINED"
      unexplained=$((unexplained + 1))
    fi
  done
  echo "  $module unexplained=$unexplained"
  if [ "$unexplained" -gt 0 ] && [[ $zero == *" $module "* ]]; then status=1; fi
  [ "${KEEP:-0}" = 1 ] && echo "  (scratch copy kept: $scratch)" || rm -rf "$scratch"
done
exit $status
