cd /work/main
export MLFLOW_TRACKING_URI=sqlite:////tmp/repro_mlflow.db OMP_NUM_THREADS=1
for spec in "recon_s0 -" "baseline_s0 -" "baseline_s0 random" "recon_s1 -" "baseline_s1 -"; do
 set -- $spec
 fl=""; [ $2 != - ] && fl="--floor $2"
 o=/tmp/repro/e30_$1_$2.json
 t0=$(date +%s)
 nice -n 10 .venv/bin/equirecon eval --checkpoint runs/repro/$1/checkpoints/latest --config configs/repro/baseline.yaml --tasks equivariance --no-mlflow $fl --out $o eval.equivariance_transforms=rotation,se2 eval.r2_epochs=30 > /dev/null 2>&1
 python3 -c "import json;d=json.load(open('$o'));print('$1 $2', {k.split('/')[-1]:round(v,3) for k,v in d['metrics'].items()}, $(date +%s)-$t0, 's')"
done
