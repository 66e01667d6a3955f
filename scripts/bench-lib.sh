# Shared by scripts/bench-report and scripts/bench-traffic (sourced, not run): start and stop
# rkserve on $PORT with a configuration written to $OUT.

pid=""
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap stop_server EXIT

# serve NAME CONFIG [MODELS_DIR]: starts rkserve with CONFIG (TOML text) and waits for /ready.
serve() {
  local name=$1 config=$2 dir=${3:-models}
  printf '%s\n' "$config" > "$OUT/$name.toml"
  target/release/rkserve --config "$OUT/$name.toml" --models-dir "$dir" --port "$PORT" \
    > "$OUT/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "rkserve ($name) exited; its log:" >&2
      cat "$OUT/$name.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "rkserve ($name) not ready after 120 s" >&2
  exit 1
}

# Long-form prompts, so that replies run to max_tokens and every configuration generates the
# same amount of text: an RKLLM run is a static batch, and a reply that ends early leaves its
# slot empty until the run ends, which would blur the comparison. 48 different ones, more
# than any level sends, so no slot is ever handed the prompt it just ran: the CPU runtime
# reuses a slot's KV cells for the prefix a new prompt shares with the last one, and real
# clients share system messages, not whole prompts.
# long_prompts FILE: writes them, one per line.
long_prompts() {
  forms=(
    "Write a long, detailed essay about %s."
    "Explain in great detail, step by step, %s."
    "Write a long story in which a traveller learns about %s, with many details."
    "Write a long, detailed guide for beginners to %s."
    "Describe at length the history and the future of %s."
    "Write a long lecture for students on %s, with examples."
  )
  topics=(
    "how the printing press changed Europe"
    "how a modern computer processor executes instructions"
    "the causes and consequences of the industrial revolution"
    "growing vegetables in a small city garden through the seasons"
    "how the immune system protects the human body"
    "building a wooden boat and sailing it around an island"
    "the journey of a great river from the mountains to the sea"
    "how lighthouses guided ships before satellites"
  )
  for topic in "${topics[@]}"; do
    for form in "${forms[@]}"; do
      # shellcheck disable=SC2059
      printf "$form\n" "$topic"
    done
  done > "$1"
}
