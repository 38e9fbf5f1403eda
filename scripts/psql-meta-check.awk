#!/usr/bin/awk -f
# Refuses a pg_dump script that psql would turn into anything but SQL.
#
#   zstd -dc DB/schema/pre-data.sql.zst | awk -f scripts/psql-meta-check.awk
#
# psql runs a meta-command wherever its lexer sees a backslash outside a
# quoted string, a dollar quote or a comment: `\! cmd` runs a shell, `\o |cmd`
# and `\copy ... program` too. pg_dump writes only `\restrict KEY`,
# `\unrestrict KEY` and `\connect DB` on lines of their own, so anything
# else is a tampered backup. This follows psql's lexer (quotes, E'' strings,
# dollar quotes, nested comments) so a backslash inside a function body is
# data; it prints each refused line and exits 1. It assumes
# standard_conforming_strings = on (as pg_dump writes for every supported
# server) and refuses a script that turns it off, which would change where
# strings end.
function ident(ch) { return ch ~ /[A-Za-z0-9_$]/ || ch > "\177" }
function refuse(why) { printf "line %d: %s: %s\n", NR, why, $0 > "/dev/stderr"; bad = 1 }
BEGIN { st = "n"; bad = 0 }
{
    line = $0; n = length(line); i = 1
    if (line ~ /standard_conforming_strings/ && line !~ /^SET standard_conforming_strings = on;$/)
        refuse("standard_conforming_strings changed")
    while (i <= n) {
        c = substr(line, i, 1)
        if (st == "n") {
            if (c == "-" && substr(line, i + 1, 1) == "-") break
            if (c == "/" && substr(line, i + 1, 1) == "*") { st = "c"; depth = 1; i += 2; continue }
            if (c == "'") { st = "q"; i++; continue }
            if (c == "\"") { st = "d"; i++; continue }
            if (c == "$" && match(substr(line, i), /^\$([A-Za-z_\200-\377][A-Za-z0-9_\200-\377]*)?\$/)) {
                tag = substr(line, i, RLENGTH); st = "$"; i += RLENGTH; continue
            }
            if (c == "\\") {
                rest = substr(line, i)
                if (substr(line, 1, i - 1) ~ /^[ \t]*$/ &&
                    (rest ~ /^\\(restrict|unrestrict) [A-Za-z0-9]+[ \t]*$/ || rest ~ /^\\connect [^\\`]+$/))
                    break
                refuse("psql meta-command")
                break
            }
            if (ident(c)) {
                j = i; while (j <= n && ident(substr(line, j, 1))) j++
                if (j - i == 1 && (c == "E" || c == "e") && substr(line, j, 1) == "'") { st = "e"; i = j + 1; continue }
                i = j; continue
            }
            i++
        } else if (st == "q" || st == "e" || st == "d") {
            q = (st == "d") ? "\"" : "'"
            if (st == "e" && c == "\\") { i += 2; continue }
            if (c == q) {
                if (substr(line, i + 1, 1) == q) { i += 2; continue }
                st = "n"
            }
            i++
        } else if (st == "$") {
            k = index(substr(line, i), tag)
            if (k == 0) break
            i += k - 1 + length(tag); st = "n"
        } else if (st == "c") {
            two = substr(line, i, 2)
            if (two == "/*") { depth++; i += 2; continue }
            if (two == "*/") { depth--; i += 2; if (depth == 0) st = "n"; continue }
            i++
        }
    }
}
END { exit bad }
