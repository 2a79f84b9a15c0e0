"""Who is on the bus: NATS decentralized authentication (operator, accounts, users as signed JWTs
over Ed25519 nkeys), minted here; nats-server checks every connection against them."""
