--
-- PostgreSQL database dump
--

\restrict oXB9p97jem1x166C0aYz0wVHqYYzq6sJrfCMjtpcfS2ZqNrCQcpFi5uBVwhZn53

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: app; Type: SCHEMA; Schema: -; Owner: app_owner
--

CREATE SCHEMA app;


ALTER SCHEMA app OWNER TO app_owner;

--
-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;


--
-- Name: EXTENSION pgcrypto; Type: COMMENT; Schema: -; Owner: 
--

COMMENT ON EXTENSION pgcrypto IS 'cryptographic functions';


--
-- Name: mood; Type: TYPE; Schema: app; Owner: postgres
--

CREATE TYPE app.mood AS ENUM (
    'sad',
    'ok',
    'happy'
);


ALTER TYPE app.mood OWNER TO postgres;

--
-- Name: posint; Type: DOMAIN; Schema: app; Owner: postgres
--

CREATE DOMAIN app.posint AS integer
	CONSTRAINT posint_check CHECK ((VALUE > 0));


ALTER DOMAIN app.posint OWNER TO postgres;

--
-- Name: add(integer, integer); Type: FUNCTION; Schema: app; Owner: postgres
--

CREATE FUNCTION app.add(a integer, b integer) RETURNS integer
    LANGUAGE sql IMMUTABLE
    BEGIN ATOMIC
 SELECT (a + b);
END;


ALTER FUNCTION app.add(a integer, b integer) OWNER TO postgres;

--
-- Name: classify(integer); Type: FUNCTION; Schema: app; Owner: postgres
--

CREATE FUNCTION app.classify(x integer) RETURNS text
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN (x > 0) THEN 'pos'::text
             ELSE 'neg;'::text
         END AS "case";
 SELECT 'two'::text;
END;


ALTER FUNCTION app.classify(x integer) OWNER TO postgres;

--
-- Name: noop(); Type: PROCEDURE; Schema: app; Owner: postgres
--

CREATE PROCEDURE app.noop()
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT 1;
END;


ALTER PROCEDURE app.noop() OWNER TO postgres;

--
-- Name: touch(); Type: FUNCTION; Schema: app; Owner: postgres
--

CREATE FUNCTION app.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
  -- a comment with \! touch /tmp/nope and 'quotes'
  NEW.created := now(); /* nested /* comment */ still */
  RAISE NOTICE E'tab\there \\! %', $$dollar; inside$$;
  RETURN NEW;
END $_$;


ALTER FUNCTION app.touch() OWNER TO postgres;

--
-- Name: mysum(integer); Type: AGGREGATE; Schema: app; Owner: postgres
--

CREATE AGGREGATE app.mysum(integer) (
    SFUNC = int4pl,
    STYPE = integer,
    INITCOND = '0'
);


ALTER AGGREGATE app.mysum(integer) OWNER TO postgres;

--
-- Name: ===; Type: OPERATOR; Schema: app; Owner: postgres
--

CREATE OPERATOR app.=== (
    FUNCTION = int4eq,
    LEFTARG = integer,
    RIGHTARG = integer
);


ALTER OPERATOR app.=== (integer, integer) OWNER TO postgres;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: orders; Type: TABLE; Schema: app; Owner: postgres
--

CREATE TABLE app.orders (
    id bigint NOT NULL,
    user_id integer,
    total numeric,
    note text,
    CONSTRAINT orders_total_check CHECK ((total >= (0)::numeric))
);


ALTER TABLE app.orders OWNER TO postgres;

--
-- Name: users; Type: TABLE; Schema: app; Owner: postgres
--

CREATE TABLE app.users (
    id integer NOT NULL,
    name text DEFAULT 'it''s \ ok'::text NOT NULL,
    mood app.mood,
    n app.posint,
    created timestamp with time zone DEFAULT now()
);


ALTER TABLE app.users OWNER TO postgres;

--
-- Name: TABLE users; Type: COMMENT; Schema: app; Owner: postgres
--

COMMENT ON TABLE app.users IS 'People; with "quotes" and E''\n'' and $$ and -- and /*';


--
-- Name: big_orders; Type: VIEW; Schema: app; Owner: postgres
--

CREATE VIEW app.big_orders AS
 SELECT o.id,
    o.user_id,
    o.total,
    o.note,
    u.name
   FROM (app.orders o
     JOIN app.users u ON ((u.id = o.user_id)))
  WHERE (o.total > (100)::numeric);


ALTER TABLE app.big_orders OWNER TO postgres;

--
-- Name: orders_id_seq; Type: SEQUENCE; Schema: app; Owner: postgres
--

ALTER TABLE app.orders ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME app.orders_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: parted; Type: TABLE; Schema: app; Owner: postgres
--

CREATE TABLE app.parted (
    id integer,
    k integer
)
PARTITION BY RANGE (k);


ALTER TABLE app.parted OWNER TO postgres;

--
-- Name: parted_1; Type: TABLE; Schema: app; Owner: postgres
--

CREATE TABLE app.parted_1 (
    id integer,
    k integer
);


ALTER TABLE app.parted_1 OWNER TO postgres;

--
-- Name: s; Type: SEQUENCE; Schema: app; Owner: postgres
--

CREATE SEQUENCE app.s
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE app.s OWNER TO postgres;

--
-- Name: totals; Type: MATERIALIZED VIEW; Schema: app; Owner: postgres
--

CREATE MATERIALIZED VIEW app.totals AS
 SELECT orders.user_id,
    sum(orders.total) AS sum
   FROM app.orders
  GROUP BY orders.user_id
  WITH NO DATA;


ALTER TABLE app.totals OWNER TO postgres;

--
-- Name: users_id_seq; Type: SEQUENCE; Schema: app; Owner: postgres
--

CREATE SEQUENCE app.users_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE app.users_id_seq OWNER TO postgres;

--
-- Name: users_id_seq; Type: SEQUENCE OWNED BY; Schema: app; Owner: postgres
--

ALTER SEQUENCE app.users_id_seq OWNED BY app.users.id;


--
-- Name: Weird "Name"; Type: TABLE; Schema: public; Owner: postgres
--

CREATE TABLE public."Weird ""Name""" (
    "semi;colon" integer,
    "back\slash" text
);


ALTER TABLE public."Weird ""Name""" OWNER TO postgres;

--
-- Name: parted_1; Type: TABLE ATTACH; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.parted ATTACH PARTITION app.parted_1 FOR VALUES FROM (0) TO (10);


--
-- Name: users id; Type: DEFAULT; Schema: app; Owner: postgres
--

ALTER TABLE ONLY app.users ALTER COLUMN id SET DEFAULT nextval('app.users_id_seq'::regclass);


--
-- Name: 4242; Type: BLOB; Schema: -; Owner: postgres
--

SELECT pg_catalog.lo_create('4242');


ALTER LARGE OBJECT 4242 OWNER TO postgres;

--
-- Name: TABLE users; Type: ACL; Schema: app; Owner: postgres
--

GRANT SELECT ON TABLE app.users TO app_owner;


--
-- PostgreSQL database dump complete
--

\unrestrict oXB9p97jem1x166C0aYz0wVHqYYzq6sJrfCMjtpcfS2ZqNrCQcpFi5uBVwhZn53

