-- group: evaluation
-- key: battle_id
-- Arena test-set battles of a round (every pair of evaluated models), the two judge games
-- combined into win/loss/tie exactly as the training battles are.
{% import 'macros/two_game.sql' as games with context %}
{{ games.two_game(ref('arena_judgments'), var('tie_margin')) }}
