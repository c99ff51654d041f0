// CqlQuery runs CQL statements against Cassandra with the DataStax Java
// driver that ships among Cassandra's own jars (.deps/cache/cassandra-*/libs),
// and prints each result as a table, values in CQL literal syntax (long
// ones clipped).
// scripts/blackbox.sh uses it so that what it shows of Cassandra's tables is
// decoded by code nobody in this project wrote. Java's single-file launcher
// runs it: java -cp 'LIBS/*' scripts/deps/CqlQuery.java [-h host:port] CQL...
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.CodecRegistry;
import com.datastax.driver.core.ColumnDefinitions;
import com.datastax.driver.core.ResultSet;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SocketOptions;
import java.util.ArrayList;
import java.util.List;

public class CqlQuery {
    public static void main(String[] args) {
        String host = "127.0.0.1";
        int port = 9042;
        List<String> statements = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("-h") && i + 1 < args.length) {
                String hp = args[++i];
                int c = hp.lastIndexOf(':');
                host = c < 0 ? hp : hp.substring(0, c);
                port = c < 0 ? port : Integer.parseInt(hp.substring(c + 1));
            } else {
                statements.add(args[i]);
            }
        }
        try (Cluster cluster = Cluster.builder().addContactPoint(host).withPort(port)
                .withSocketOptions(new SocketOptions().setConnectTimeoutMillis(5000).setReadTimeoutMillis(20000))
                .withoutJMXReporting().withoutMetrics().build();
             Session session = cluster.connect()) {
            for (String st : statements) {
                print(session.execute(st));
            }
        } catch (RuntimeException e) {
            System.err.println("cql: " + e.getMessage());
            System.exit(1);
        }
    }

    // clip shortens a long value (a blob, a big map) to keep rows readable.
    static String clip(String s) {
        final int max = 64;
        return s.length() <= max ? s : s.substring(0, max) + "...(" + s.length() + " chars)";
    }

    static void print(ResultSet rs) {
        ColumnDefinitions defs = rs.getColumnDefinitions();
        int n = defs.size();
        if (n == 0) {
            return;
        }
        List<String[]> rows = new ArrayList<>();
        String[] head = new String[n];
        for (int i = 0; i < n; i++) {
            head[i] = defs.getName(i);
        }
        rows.add(head);
        CodecRegistry codecs = CodecRegistry.DEFAULT_INSTANCE;
        for (Row r : rs) {
            String[] cells = new String[n];
            for (int i = 0; i < n; i++) {
                Object v = r.getObject(i);
                if (v == null) {
                    cells[i] = "null";
                } else if (v instanceof java.util.Date) { // the codec prints bare milliseconds
                    cells[i] = "'" + ((java.util.Date) v).toInstant() + "'";
                } else {
                    cells[i] = clip(codecs.codecFor(defs.getType(i)).format(v));
                }
            }
            rows.add(cells);
        }
        int[] w = new int[n];
        for (String[] row : rows) {
            for (int i = 0; i < n; i++) {
                w[i] = Math.max(w[i], row[i].length());
            }
        }
        for (int k = 0; k < rows.size(); k++) {
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < n; i++) {
                b.append(i == 0 ? "" : " | ").append(String.format("%-" + w[i] + "s", rows.get(k)[i]));
            }
            System.out.println(b.toString().stripTrailing());
            if (k == 0) {
                StringBuilder sep = new StringBuilder();
                for (int i = 0; i < n; i++) {
                    sep.append(i == 0 ? "" : "-+-").append("-".repeat(w[i]));
                }
                System.out.println(sep);
            }
        }
        System.out.println("(" + (rows.size() - 1) + " rows)");
    }
}
