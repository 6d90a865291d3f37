-- The demo's customers database: a few rows of (fake) personal data, the kind an agent that
-- manages customers reads every day. The card numbers pass the Luhn check and the emails are
-- well-formed, so the shipped policy's detectors and column rules both have something to mask.
CREATE TABLE customers (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    card_number text,
    tier        text NOT NULL DEFAULT 'standard'
);

INSERT INTO customers (id, name, email, card_number, tier) VALUES
    (1, 'Ada Lovelace',    'ada.lovelace@example.com',  '4111111111111111', 'standard'),
    (2, 'Alan Turing',     'alan.turing@example.com',   '5555555555554444', 'standard'),
    (3, 'Grace Hopper',    'grace.hopper@example.com',  '378282246310005',  'silver'),
    (4, 'Edsger Dijkstra', 'edsger@example.org',        '6011111111111117', 'standard');
