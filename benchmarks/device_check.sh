#!/usr/bin/env bash
# The GPU check of issue 3, as run on the device tool's NVIDIA H200 (docs/RESULTS.md).
#
# Prepared here, run there from the repository root with .whl and .gpu-cache carried:
#   .whl/        wheels of transformers 5.24.0, trl 1.16.0, peft 0.21.2, datasets 5.2.0, dill,
#                multiprocess, tokenizers 0.23.3, regex, xxhash (pip download --only-binary,
#                python 3.12, manylinux x86_64): the machine has torch but not these versions
#   .gpu-cache/  a copy of the tiny base folder (tiny-base-<key>), so nothing is built there
# Writes gpu.json and cpu.json (benchmarks/tiny_trap.py --json) into $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
ln -s $PWD/training /tmp/site/searchlab_training; ln -s $PWD/evaluation /tmp/site/searchlab_evaluation; ln -s $PWD/searchlab /tmp/site/searchlab
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import pyarrow, torch, transformers, trl, peft, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" || exit 1
export OMP_NUM_THREADS=1 HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cp -r .gpu-cache /tmp/cpu-cache
python3 benchmarks/tiny_trap.py --device cuda --cache .gpu-cache --steps 500 --learning-rate 3e-3 --shares 0 1 --seeds 1 2 --json > $OUT/gpu.json 2> $OUT/gpu.err; echo gpu rc $?; tail -3 $OUT/gpu.err
python3 benchmarks/tiny_trap.py --device cpu --cache /tmp/cpu-cache --steps 500 --learning-rate 3e-3 --shares 0 1 --seeds 1 --json > $OUT/cpu.json 2> $OUT/cpu.err; echo cpu rc $?; tail -3 $OUT/cpu.err
python3 -c "
import json
for n in ('gpu','cpu'):
    d=json.load(open('$OUT/'+n+'.json')); print(n, d['device'], 'train tok/s', d['median_train_tokens_per_s'], 'eval samples/s', d['median_eval_samples_per_s'], [(r['share'], r['seed'], r['dev'], r['external']) for r in d['rows']])
"
