// The client-matrix script (tests/clients.py) played by pgjdbc, the driver DBeaver uses.
// Run as `java -cp postgresql.jar Matrix.java '<target json>'`; prints one JSON object (a Seen).

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

public class Matrix {
    /** One field of the flat JSON object the test passes (strings, numbers, booleans). */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\":\\s*(\"([^\"]*)\"|[^,}\\s]+)").matcher(json);
        if (!m.find()) throw new IllegalArgumentException("no " + name + " in " + json);
        return m.group(2) != null ? m.group(2) : m.group(1);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getObject(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String t = args[0];
        boolean tls = Boolean.parseBoolean(field(t, "tls"));
        Properties p = new Properties();
        p.setProperty("user", field(t, "user"));
        p.setProperty("password", field(t, "password"));
        // require fails rather than fall back: connected means encrypted.
        p.setProperty("sslmode", tls ? "require" : "disable");
        // Use a named server-side statement from the first execution, not the fifth.
        p.setProperty("prepareThreshold", "1");
        String url = "jdbc:postgresql://" + field(t, "host") + ":" + field(t, "port") + "/"
                + field(t, "dbname");
        try (Connection c = DriverManager.getConnection(url, p)) {
            PGConnection pg = c.unwrap(PGConnection.class);
            int sum;
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + ?::int")) {
                ps.setInt(1, 40);
                ps.setInt(2, 2);
                try (ResultSet r = ps.executeQuery()) { r.next(); sum = r.getInt(1); }
            }
            List<Integer> prepared = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 10")) {
                for (int a = 1; a <= 3; a++) {
                    ps.setInt(1, a);
                    try (ResultSet r = ps.executeQuery()) { r.next(); prepared.add(r.getInt(1)); }
                }
                boolean onServer = (Boolean) one(c, "SELECT count(*) > 0 FROM pg_prepared_statements");
                try (Statement s = c.createStatement()) {
                    s.execute("CREATE TEMP TABLE copied (t text)");
                }
                pg.getCopyAPI().copyIn("COPY copied FROM STDIN", new StringReader("alpha\nbeta\n"));
                StringWriter out = new StringWriter();
                pg.getCopyAPI().copyOut("COPY copied TO STDOUT", out);
                try (Statement s = c.createStatement()) {
                    s.execute("LISTEN prism_matrix");
                    s.execute("NOTIFY prism_matrix, 'hello'");
                }
                PGNotification[] notes = pg.getNotifications(10000);
                double within = cancel(c);
                String sqlstate = null;
                try {
                    one(c, "SELECT 1/0");
                } catch (SQLException e) {
                    sqlstate = e.getSQLState();
                }
                int after = (Integer) one(c, "SELECT 7");
                StringBuilder copied = new StringBuilder();
                for (String line : out.toString().split("\n")) {
                    if (copied.length() > 0) copied.append(", ");
                    copied.append('"').append(line).append('"');
                }
                System.out.println("{\"tls\": " + tls + ", \"sum\": " + sum
                        + ", \"prepared\": " + prepared + ", \"prepared_on_server\": " + onServer
                        + ", \"copied\": [" + copied + "], \"notification\": \""
                        + notes[0].getParameter() + "\", \"notified_by_own_pid\": "
                        + (notes[0].getPID() == pg.getBackendPID()) + ", \"cancelled_within\": "
                        + within + ", \"error_sqlstate\": \"" + sqlstate + "\", \"after_error\": "
                        + after + "}");
            }
        }
    }

    /** Statement.cancel() from another thread, as DBeaver's cancel button does. */
    static double cancel(Connection c) throws Exception {
        long[] fired = new long[1];
        try (Statement s = c.createStatement()) {
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    fired[0] = System.nanoTime();
                    s.cancel();
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            canceller.start();
            try {
                s.execute("SELECT pg_sleep(30)");
                throw new IllegalStateException("pg_sleep(30) was not cancelled");
            } catch (SQLException e) {
                if (!"57014".equals(e.getSQLState())) throw e;
            }
            canceller.join();
        }
        one(c, "SELECT 1");
        return (System.nanoTime() - fired[0]) / 1e9;
    }
}
