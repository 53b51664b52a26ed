#!/usr/bin/env bash
# OpenRLHF 0.11 PPO/GRPO with a reward model served by rmplugins (any family: ArmoRM, GPM, pair-PM, PairRM, BT).
#
# 1) the reward server (on the reward GPU; binds 127.0.0.1 unless you pass --host, then use --api-key):
#      rmplugins serve --model RLHFlow/ArmoRM-Llama3-8B-v0.1 --policy-tokenizer "$POLICY" --device cuda:0 --port 5000
# 2) this script. Two ways to reach the server:
#      --reward.remote_url http://127.0.0.1:5000/get_reward          (OpenRLHF's own client; it sends no API key)
#      --reward.remote_url integrations/openrlhf/reward_func.py      (our client: API key, several servers, retries)
#
# Pairwise kinds (pair_pm, pairrm, gpm) need a reference response per prompt in the label:
#   --data.label_key reference   with a dataset column holding the reference answer (string or {"reference": ...}).
set -euo pipefail

POLICY=${POLICY:-meta-llama/Meta-Llama-3-8B-Instruct}
PROMPTS=${PROMPTS:-OpenRLHF/prompt-collection-v0.1}
REWARD=${REWARD:-http://127.0.0.1:5000/get_reward}   # or: $(pwd)/integrations/openrlhf/reward_func.py

if [[ "$REWARD" == *.py ]]; then
  export RMPLUGINS_REWARD_URL=${RMPLUGINS_REWARD_URL:-http://127.0.0.1:5000/get_reward}
  # export RMPLUGINS_API_KEY=...   # when the server runs with --api-key
fi

curl -sf http://127.0.0.1:5000/health >/dev/null || { echo "start 'rmplugins serve' first (see above)"; exit 1; }

python -m openrlhf.cli.train_ppo_ray \
  --actor.model_name_or_path "$POLICY" \
  --reward.remote_url "$REWARD" \
  --data.prompt_dataset "$PROMPTS" \
  --data.input_key context_messages \
  --data.apply_chat_template \
  "$@"
