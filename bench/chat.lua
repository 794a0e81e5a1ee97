-- wrk script: POST a small OpenAI chat request to the simulator.
-- wrk -t1 -c32 -d10s -s bench/chat.lua http://127.0.0.1:9100/openai/v1/chat/completions
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sim-key"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
