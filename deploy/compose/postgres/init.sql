-- A small database for the agent to back up and drill.
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount_cents integer NOT NULL CHECK (amount_cents >= 0),
    placed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders (customer_id);
INSERT INTO customers (email)
SELECT format('customer%s@example.com', i) FROM generate_series(1, 1000) AS i;
INSERT INTO orders (customer_id, amount_cents, placed_at)
SELECT 1 + (i % 1000), (i * 37) % 10000, now() - make_interval(mins => i)
FROM generate_series(1, 20000) AS i;
