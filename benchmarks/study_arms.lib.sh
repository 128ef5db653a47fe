# The method-effect study's arm names (issue #25), shared by benchmarks/study_arms.sh (CPU) and
# benchmarks/gpu_study.sh (GPU): `source benchmarks/study_arms.lib.sh` from the repository root.
# An arm's name is a base and optional suffixes, each one flag:
#   baseline        g off (recon.enabled=false): the plain VICReg
#   lambdaN         g on, λ = N (lambda0: the rotation in the SSL views, decoders untrained)
#   control         lambda0 + a head regressing θ from [global f(u); global f(g_θ u)] at weight 1
#   control25       the same head at weight 25
#   thetaonly       the head alone (VICReg's three weights 0): can this ViT learn θ at all?
#   ...-disk        recon.fill=disk: every view masked to the inscribed disk (θ from content only)
#   ...-dequiN      recon.d_equi=N
#   ...-stepsN      train.max_steps=N (e.g. thetaonly-steps600: the round-3 seed-0 control)
#   ...-lrN         train.base_lr=N·1e-3 (the study's arms run at lr8: 8e-3, 4x the paper rule)
#   ...-pxN         images of N px, patch N/8 (the same 8 x 8 tokens, so about the same cost):
#                   resolution as the one knob; give such arms their own RUNS (their floors differ)
# Error messages name "$0", the script that sourced this file.

arm_overrides() {  # arm_overrides NAME: the key=value flags of an arm, one per line
  local name="$1" base suffix
  IFS='-' read -r -a parts <<< "$name"
  base="${parts[0]}"
  case "$base" in
    baseline) echo "recon.enabled=false" ;;
    lambda[0-9]*) echo "recon.lambda=${base#lambda}" ;;
    control) printf '%s\n' recon.lambda=0 recon.theta_head_weight=1 ;;
    control25) printf '%s\n' recon.lambda=0 recon.theta_head_weight=25 ;;
    thetaonly) printf '%s\n' recon.lambda=0 recon.theta_head_weight=1 method.vicreg_sim_weight=0 \
      method.vicreg_var_weight=0 method.vicreg_cov_weight=0 ;;
    *) echo "unknown arm base '$base' in '$name' (see the header of $0)" >&2; return 2 ;;
  esac
  for suffix in "${parts[@]:1}"; do
    case "$suffix" in
      disk) echo "recon.fill=disk" ;;
      dequi[0-9]*) echo "recon.d_equi=${suffix#dequi}" ;;
      steps[0-9]*) echo "train.max_steps=${suffix#steps}" ;;
      lr[0-9]*) echo "train.base_lr=${suffix#lr}e-3" ;;
      px[0-9]*)
        local px="${suffix#px}"
        if ((px % 8)); then echo "$0: px$px in '$name' is not a multiple of 8" >&2; return 2; fi
        printf '%s\n' "data.global_size=$px" "data.local_size=$((px / 2))" "model.patch_size=$((px / 8))"
        ;;
      *) echo "unknown arm suffix '$suffix' in '$name' (see the header of $0)" >&2; return 2 ;;
    esac
  done
}

views_of() {  # views_of ARM: the probe views of an arm (-disk arms also get `disk`)
  if [[ "$1" == *-disk* ]]; then echo "full context disk"; else echo "full context"; fi
}

features_of() {  # features_of ARM: the probe's features besides `global` (equi: arms with a split head)
  if [[ "$1" == baseline* ]]; then echo "grid2"; else echo "grid2 equi"; fi
}
