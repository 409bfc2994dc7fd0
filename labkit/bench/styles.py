"""Figures of the architecture notebooks' services: gossip among peers, checkout on a shared database."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math

from .tools import Plan, entry, measures

#: Peers in the gossip measurement.
GOSSIP_PEERS = 8


@measures(("gossip_rounds_ratio", "<=", 1.0, "x"))
def bench_gossip(plan: Plan, keys: set) -> dict:
    """Rounds until news written at one of 8 peers reaches all, against what theory predicts.

    Every peer gossips once per round (push-pull anti-entropy through labkit Links) with a
    partner chosen at random. Push-only rumour spreading informs N nodes in
    log2(N) + ln(N) + O(1) rounds (B. Pittel, "On spreading a rumor", SIAM J. Appl. Math.
    47(1), 1987); push-pull needs log3(N) + O(log log N) (R. Karp, C. Schindelhauer,
    S. Shenker, B. Vöcking, "Randomized rumor spreading", FOCS 2000). A ratio at or below 1
    says the peers do at least as well as push alone predicts.
    """
    import labkit
    from labkit.apps.peer import create_app, network_dial

    names = [f"bench-peer-{i}" for i in range(GOSSIP_PEERS)]
    repeats = plan(20, 6)
    rounds: dict[float, list[int]] = {0.0: [], 0.2: []}
    for repeat in range(repeats):
        for drop, taken in rounds.items():
            log = labkit.Trace()
            with contextlib.ExitStack() as stack:
                net = stack.enter_context(labkit.Network(seed=repeat, trace=log))
                peers, urls = {}, {}
                for name in names:
                    app = create_app(peer_name=name, dial=network_dial(net, name, drop=drop), seed=repeat,
                                     timeout=0.3, trace=log)
                    urls[name] = stack.enter_context(labkit.serve(app, name=name, trace=log)).url
                    app.peer.address = urls[name]
                    peers[name] = app.peer
                for peer in peers.values():  # everyone knows everyone: partners are uniform, as the theory assumes
                    peer.learn(urls)
                peers[names[repeat % len(names)]].write("news", repeat)
                with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                    for number in range(1, 51):
                        list(pool.map(lambda peer: peer.gossip_round(), peers.values()))
                        if all("news" in peer.entries for peer in peers.values()):
                            break
                taken.append(number)
    push = math.log2(len(names)) + math.log(len(names))
    push_pull = math.log(len(names), 3)
    clean, lossy = sorted(rounds[0.0]), sorted(rounds[0.2])
    return {"gossip_rounds_ratio": entry(
        "gossip_rounds_ratio", clean[len(clean) // 2] / push, push,
        f"{len(names)} peers, push-pull through links, {repeats} runs: median {clean[len(clean) // 2]} rounds "
        f"(range {clean[0]}-{clean[-1]}); with 20% of messages dropped median {lossy[len(lossy) // 2]}; "
        f"theory: push log2 N + ln N = {push:.2f} (Pittel 1987), push-pull log3 N = {push_pull:.2f} "
        f"+ O(log log N) (Karp et al. 2000); baseline in rounds")}
